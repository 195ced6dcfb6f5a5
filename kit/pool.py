"""A configuration's predictions pooled from its members' saved files: out-of-fold rows put together (each
labelled image once) and test probabilities averaged over its fold models (or its refits)."""
from __future__ import annotations

import numpy as np

from kit.errors import RunDirError
from kit.plan import MemberPlan
from kit.predictions import Predictions, load_predictions
from kit.rundir import pred_path


def config_oofs(run_dir, members: list[MemberPlan], done: dict) -> dict:
    """{mode: pooled out-of-fold Predictions} of one configuration, for every mode all its members predicted."""
    return {mode: config_predictions(run_dir, members, mode, need_test=False)[0]
            for mode in available_modes(run_dir, members, done)}


def available_modes(run_dir, members: list[MemberPlan], done: dict) -> list[str]:
    """Modes every one of these members has predicted (planned, or added later by `kit predict --tta`)."""
    modes = [m for m in dict.fromkeys(k for d in done.values() for k in d["scores"])]
    return [m for m in modes if all(m in done[x.name]["scores"] and
                                    pred_path(run_dir, x.name, "oof", m).exists() for x in members)]


def config_predictions(run_dir, members: list[MemberPlan], tta: str, *, need_test: bool = True,
                       refits: list[MemberPlan] = ()) -> tuple[Predictions, Predictions | None]:
    """Out-of-fold predictions of one configuration (its fold models' validation rows put together: each
    labelled image once) and its test predictions (the fold models' probabilities averaged, or those of the
    members `refits` trained on every labelled image when data.refit made them)."""
    oofs = [load_predictions(pred_path(run_dir, m.name, "oof", tta)) for m in members]
    oof = Predictions(np.concatenate([p.ids for p in oofs]), np.concatenate([p.probs for p in oofs]),
                      oofs[0].classes, np.concatenate([p.labels for p in oofs]))
    if not need_test:
        return oof, None
    test_members = list(refits) or members
    test_files = [pred_path(run_dir, m.name, "test", tta) for m in test_members]
    missing = [(m, f) for m, f in zip(test_members, test_files) if not f.exists()]
    if missing:
        m, f = missing[0]
        raise RunDirError(f"member {m.name} has no test predictions for TTA mode {tta} ({f} is missing); "
                          f"predict them again with: kit predict {run_dir} --tta {tta}")
    tests = [load_predictions(f) for f in test_files]
    test = Predictions(tests[0].ids, np.mean([t.reorder(tests[0].ids).probs for t in tests], axis=0),
                       tests[0].classes)
    return oof, test


