"""The one rule for every automatic choice between candidates scored on the same rows: TTA modes (kit.choice's
choose_tta), blending methods (kit.ensemble.choose_method), anything `auto` picks from scores.

A reference candidate, the simple and expected choice (`none` for TTA; the `mean` of the members for blends: the
average of independently seeded members is what the user asked for), is replaced only when another candidate beats
it by more than NOISE_SE paired standard errors (kit.metrics.paired_se) on the same out-of-fold rows (nested rows
for fitted blends); where the metric cannot tell candidates apart, a second score may decide among them (TTA: log
loss; blends: none, the reference stays). Each choice's setting is measured (benchmarks/README.md); see `choose`.

Why a margin: on a few hundred rows accuracy moves by an image or two between candidates that differ by chance.
The quickstart once kept its best single member over the mean of three on a one-image lead of 288 nested rows
(0.9792 vs 0.9757) and lost 1.6 points of test accuracy to the mean it passed over.

numpy only (no torch): a choice can be redone from saved predictions on any machine.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kit import metrics as M

NOISE_SE = 2.0  # a candidate's lead over the reference counts when over this many paired standard errors
# The score that decides among TTA modes the metric cannot tell apart: log loss scores every row's probabilities,
# not only its argmax, and the views of one model differ in it systematically (bench_tta_choice.py: on the
# Fashion-MNIST development competition hflip beat none on every member; with the metric alone the margin kept none
# on most halves, 0.9135 against 0.9164 held out over 6 configurations). Blends have none (bench_blend_choice.py: log
# loss preferred the sharper gmean over the mean where the metric could not tell them apart, and lost accuracy on
# the quickstart, 0.9849 against 0.9865 held out)
TTA_SECONDARY = "log_loss"


class Choice(NamedTuple):
    name: str
    why: str  # one line for the run summary: which rule decided, and by how much
    lead: float = 0.0  # |score(name) - score(reference)| on the score that decided: 0 when the reference is kept
    se: float = 0.0  # the paired standard error of that difference (of the closest challenger when kept)


def choose(candidates: dict, y, metric: str, reference: str, *, what: str = "candidate",
           secondary: str | None = None) -> Choice:
    """`candidates`: {name: probabilities (n, C)} on the same rows, whose labels are `y`; `reference` one of them.

    1. A candidate that beats the reference on `metric` by more than NOISE_SE paired standard errors replaces it
       (the best-scored of those that do).
    2. Else, with a `secondary` score (TTA: log loss), the best on it among the reference and the candidates within
       NOISE_SE paired standard errors of it on `metric` (a candidate clearly behind is not one of them).
    3. Else the reference. Ties go to the reference, then to the candidate listed first."""
    if reference not in candidates:
        raise ValueError(f"the reference {what} {reference!r} is not among the candidates {list(candidates)}")
    if len(candidates) == 1:
        return Choice(reference, f"the only {what}")
    y = np.asarray(y)
    ref_p = candidates[reference]
    others = [n for n in candidates if n != reference]
    higher = M.get_metric(metric).higher_is_better
    scores = {n: M.score(metric, y, p) for n, p in candidates.items()}
    se = {n: M.paired_se(metric, y, candidates[n], ref_p) for n in others}
    lead = {n: (scores[n] - scores[reference]) * (1 if higher else -1) for n in others}  # > 0: ahead of the reference
    beyond = [n for n in others if lead[n] > NOISE_SE * se[n]]
    if beyond:
        name = _best(beyond, scores, metric)
        return Choice(name, f"{name} beats {reference} (the reference) by {lead[name]:.4f} out-of-fold {metric}, "
                            f"more than {NOISE_SE:g} paired standard errors ({se[name]:.4f})", lead[name], se[name])
    close = [n for n in others if abs(lead[n]) <= NOISE_SE * se[n]]
    if secondary and secondary != metric and close:
        sec = {n: M.score(secondary, y, candidates[n]) for n in [reference, *close]}
        name = _best([reference, *close], sec, secondary)
        if name != reference:
            gain = abs(sec[reference] - sec[name])
            return Choice(name, f"{', '.join([reference, *close])} within {NOISE_SE:g} paired standard errors of "
                                f"{reference} (the reference) on out-of-fold {metric}: the best {secondary} of those, "
                                f"{gain:.4f} better than {reference}'s ({lead[name]:+.4f} {metric})", gain, se[name])
    ahead = [n for n in others if lead[n] > 0]
    if not ahead:
        return Choice(reference, f"{reference} (the reference) scores best on out-of-fold {metric}")
    name = max(ahead, key=lambda n: lead[n])
    return Choice(reference, f"{reference} (the reference) kept: no {what} beats it by more than {NOISE_SE:g} paired "
                             f"standard errors ({name} leads by {lead[name]:.4f} {metric}, SE {se[name]:.4f})",
                  0.0, se[name])


def _best(names: list, scores: dict, metric: str) -> str:
    best = names[0]
    for n in names[1:]:
        if M.better(metric, scores[n], scores[best]):
            best = n
    return best


def choose_tta(oofs: dict, metric: str, fixed: str = "auto", metrics: tuple | None = None) -> Choice:
    """The TTA mode: `fixed` (tta.mode) when set; else kit.choice's rule over `oofs` ({mode: pooled out-of-fold
    Predictions of the same rows}) with `none` the reference whenever it was predicted. `metrics`: those that
    score the task (kit.task.Task.metrics); TTA_SECONDARY decides near-ties where it is one of them."""
    if fixed != "auto":
        return Choice(fixed, "tta.mode")
    modes = sorted(oofs, key=lambda m: m != "none")  # none first, the others in their order
    ref = oofs[modes[0]]
    probs = {m: oofs[m].reorder(ref.ids).probs for m in modes}
    secondary = TTA_SECONDARY if metrics is None or TTA_SECONDARY in metrics else None
    return choose(probs, ref.labels, metric, modes[0], what="TTA mode", secondary=secondary)
