"""ensemble/report.json (and ensemble/round<k>/report.json of a pseudo-label round): what a blend chose, written
by one function and read back by one, for kit submit, the pseudo-label and distillation teacher (kit.pseudo),
kit.load and bundles (kit.inference) alike.

    {"metric", "round", "chosen", "why", "members": [config, ...], "tta": {config: mode},
     "temperatures": [T per member] | null, "best_member", "best_member_score",
     "methods": {method: {"weights", "oof_score", "nested_score", "params"?}},
     "decision": {"kind": "thresholds" | "cuts", "values", "low"?, "kept", "why", "default", "nested"} | null}

`decision` is the rule fitted on the out-of-fold rows of what predicts (kit.decision): every reader applies it
(kit.decision.apply_decision) to the blend's scores when `kept`, before the submission's values are decided.

`chosen` is null when fewer than two configurations finished (the best member is the prediction). Temperatures
(ensemble.temperature) are those the methods were fitted on: every reader applies them before the blend.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import RunDirError
from kit.readers import NUMBER as _NUMBER, check_schema, read_json
from kit.rundir import write_json_if_changed

REPORT_FILE = "report.json"
REPORT_SCHEMA = {"members": [str], "methods": {"*": {"weights": [_NUMBER], "oof_score": _NUMBER,
                                                    "nested_score": _NUMBER}},
                 "tta?": {"*": str}, "chosen?": (str, type(None)), "best_member?": (str, type(None)),
                 "best_member_score?": (int, float, type(None)), "round?": (int, type(None)),
                 "decision?": (dict, type(None))}
DECISION_SCHEMA = {"kind": str, "values": [_NUMBER], "kept": bool, "low?": _NUMBER, "why?": str,
                   "default?": _NUMBER, "nested?": _NUMBER}


@dataclass(frozen=True)
class BlendReport:
    metric: str
    chosen: str | None
    why: str
    members: list  # configuration names, in the blend's order
    tta: dict  # configuration -> its TTA mode
    temperatures: list | None  # one per member, or None
    methods: dict  # method -> {"weights", "oof_score", "nested_score", "params"?}
    best_member: str | None = None
    best_member_score: float | None = None
    round: int | None = None
    decision: dict | None = None  # kit.decision's fitted rule (applied when decision["kept"])

    def method(self, name: str | None = None):
        """The kit.ensemble.MethodResult of `name` (default: the chosen method), or None without a blend."""
        from kit.ensemble import MethodResult
        name = name or self.chosen
        if name is None:
            return None
        res = self.methods[name]
        return MethodResult(name, np.asarray(res["weights"], dtype=np.float64), res["oof_score"],
                            res["nested_score"], res.get("params"))

    @property
    def score(self) -> float | None:
        """The validation estimate of what this blend submits: the chosen method's nested score, or the best
        member's score."""
        return self.methods[self.chosen]["nested_score"] if self.chosen else self.best_member_score

    @property
    def rule(self) -> dict | None:
        """The decision rule to apply to what this report predicts (kit.decision), or None."""
        return self.decision if self.decision and self.decision.get("kept") else None


def write_report(out: Path, report: BlendReport) -> Path:
    return write_json_if_changed(Path(out) / REPORT_FILE, {
        "metric": report.metric, "round": report.round, "chosen": report.chosen, "why": report.why,
        "members": list(report.members), "tta": dict(report.tta),
        "temperatures": None if report.temperatures is None else [float(t) for t in report.temperatures],
        "best_member": report.best_member, "best_member_score": report.best_member_score,
        "methods": report.methods, "decision": report.decision})


def method_dict(res) -> dict:
    """A kit.ensemble.MethodResult as report.json holds it."""
    return {"weights": np.asarray(res.weights).tolist(), "oof_score": res.oof_score, "nested_score": res.nested_score,
            **({"params": res.params} if res.params else {})}


def read_report(path, fix: str) -> BlendReport:
    """A report.json checked for the fields and types readers use; RunDirError naming the file and `fix`."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} is missing; {fix}")
    try:
        d = read_json(path, fix=fix, schema=REPORT_SCHEMA)
        members, methods, tta = list(d["members"]), dict(d.get("methods") or {}), dict(d.get("tta") or {})
        chosen = d.get("chosen")
        if chosen is not None and chosen not in methods:
            raise KeyError(f"chosen method {chosen!r} has no entry in methods")
        if d.get("decision") is not None:
            check_schema(d["decision"], DECISION_SCHEMA, "decision")
            if d["decision"]["kind"] not in ("thresholds", "cuts"):
                raise ValueError(f"unknown decision rule {d['decision']['kind']!r}")
        temps = d.get("temperatures")
        if temps is not None and len(temps) != len(members):
            raise ValueError(f"{len(temps)} temperatures for {len(members)} members")
        for name, res in methods.items():
            if len(res["weights"]) != len(members):
                raise ValueError(f"method {name} has {len(res['weights'])} weights for {len(members)} members")
        return BlendReport(str(d.get("metric")), chosen, str(d.get("why") or ""), [str(m) for m in members],
                           {str(k): str(v) for k, v in tta.items()}, None if temps is None else
                           [float(t) for t in temps], methods, d.get("best_member"), d.get("best_member_score"),
                           d.get("round"), d.get("decision"))
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise RunDirError(f"cannot read {path} ({type(e).__name__}: {str(e)[:200]}); {fix}") from None
