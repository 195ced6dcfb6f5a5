"""Which transfer strategy fits a data set, measured rather than asked: `kit advise RECIPE`, `model.strategy: auto`.

The practitioners' table (CS231n's transfer-learning notes, Yosinski et al. 2014):

                         similar to ImageNet            different from ImageNet
    small data set       feature extraction             cut near the input, retrain what is kept (*)
    large data set       fine-tune the later stages     train everything

(*) measured worse than training everything, by far, on both small "different" data sets kit is checked on
(digits, benchmarks/photo_patches.py): `decide` trains everything there too.

Size is counted. Similarity is measured on a sample of the labelled images with the pretrained backbone, all
through kit.features' embedding cache (so the extraction is shared with later feature_extract members):
- probe_lift: a cross-validated logistic-regression probe on the pooled embeddings, as the lift of its
  accuracy over the majority class, (acc - base) / (1 - base): 0 = no better than guessing, 1 = perfect;
- probe_lift_early: the same probe on the pooled output of an early stage (stride 8): generic edges and
  textures. Data similar to ImageNet gain from the late, ImageNet-specific features; when those are no
  better than the early ones, the data are different (digits: lift 0.90 late, 0.90 early);
- imagenet_max_prob, imagenet_entropy: the pretrained 1000-class head applied to the same embeddings (mean
  top-1 probability; mean entropy / log(1000)). Reported beside the probes; used to decide only when no probe
  could be run (fewer than 2 images in some class).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from kit.recipe import Recipe, RecipeError, set_path

# Thresholds of `decide`, documented so that each case can be constructed.
LARGE_IMAGES = 10_000  # large: at least this many labelled images ...
LARGE_PER_CLASS = 1_000  # ... or at least this many per class on average
SIMILAR_LIFT = 0.70  # similar: the pooled-embedding probe recovers >= 70% of the gap between guessing and perfect
LATE_GAIN = 0.03  # ... and its lift beats the early-stage probe's by >= 0.03 (the late features add something)
EASY_LIFT = 0.97  # ... unless both probes reach this: any features solve it, so the cheapest strategy will do
SIMILAR_MAX_PROB = 0.30  # without a probe: similar when the ImageNet head's mean top-1 probability is >= 0.30
EARLY_REDUCTION = 8  # the early stage probed (and cut at): the first with stride 8
ADVISE_SAMPLE = 2_000  # labelled images measured at most (stratified); 2,000 x 1,280 floats = 10 MB
PROBE_FOLDS = 5
PROBE_C = 1.0


@dataclass
class Advice:
    strategy: str
    recipe_keys: dict  # dotted recipe key -> value, e.g. {"model.strategy": "cut_at", "model.cut_at": 2}
    measurements: dict
    reasoning: list[str] = field(default_factory=list)


def decide(n_images: int, n_classes: int, similarity_measurements: dict, *, n_stages: int | None = None
           ) -> tuple[str, dict, list[str]]:
    """(strategy, recipe keys, reasoning) from the data set's size and the measured similarity.

    similarity_measurements: probe_lift (required unless imagenet_max_prob is given), probe_lift_early,
    imagenet_max_prob, early_stage (the cut_at index of the early stage, default 2).
    n_stages: the backbone's stage groups (kit.models.strategies.stage_groups), to freeze the earlier half.
    """
    m = similarity_measurements
    per_class = n_images / max(n_classes, 1)
    large = n_images >= LARGE_IMAGES or per_class >= LARGE_PER_CLASS
    why = [f"{n_images} labelled images, {per_class:.0f} per class: "
           + ("large" if large else "small")
           + f" (large from {LARGE_IMAGES} images or {LARGE_PER_CLASS} per class)"]
    lift, early = m.get("probe_lift"), m.get("probe_lift_early")
    if lift is not None:
        similar = lift >= SIMILAR_LIFT
        why.append(f"linear probe on the pooled embeddings: lift {lift:.2f} over the majority class "
                   + (">=" if similar else "<") + f" {SIMILAR_LIFT}")
        if similar and early is not None:
            if min(lift, early) >= EASY_LIFT:
                why.append(f"early-stage probe: lift {early:.2f}; both >= {EASY_LIFT}: an easy task for any "
                           f"features, so treated as similar (the cheapest strategy will do)")
            elif lift - early < LATE_GAIN:
                similar = False
                why.append(f"but the early-stage probe does as well (lift {early:.2f}; the late features gain "
                           f"{lift - early:+.2f} < {LATE_GAIN}): what ImageNet taught the later stages does not help")
            else:
                why.append(f"early-stage probe: lift {early:.2f}, {lift - early:+.2f} for the late features")
    elif m.get("imagenet_max_prob") is not None:  # fewer than 2 images in some class: no cross-validation
        similar = m["imagenet_max_prob"] >= SIMILAR_MAX_PROB
        why.append(f"no probe; the ImageNet head's mean top-1 probability is {m['imagenet_max_prob']:.2f} "
                   + (">=" if similar else "<") + f" {SIMILAR_MAX_PROB}")
    else:
        raise ValueError("similarity_measurements needs probe_lift or imagenet_max_prob, "
                         f"got {sorted(m)}")
    why.append("similar to the pretraining data" if similar else "different from the pretraining data")
    if similar and not large:
        strategy, keys = "feature_extract", {"model.strategy": "feature_extract"}
        why.append("small and similar: the pretrained features already separate the classes; train a head on "
                   "cached embeddings (fast, and too few images to fine-tune without overfitting)")
    elif similar:
        frozen = max(1, (n_stages or 4) // 2)
        strategy, keys = "finetune", {"model.strategy": "finetune", "model.frozen_stages": frozen}
        why.append(f"large and similar: fine-tune the later stages, the earlier {frozen} stay frozen")
    elif not large:
        strategy, keys = "full", {"model.strategy": "full"}
        why.append(f"small and different: train everything from the pretrained weights. (The table above says: "
                   f"cut near the input and retrain what is kept; measured, one seed, 3 epochs, cut_at "
                   f"{int(m.get('early_stage', 2))} validated 0.566 on digits against 0.854 for full fine-tuning, "
                   f"and 0.875 against 0.990 on photo patches: model.strategy: cut_at stays yours to ask for)")
    else:
        strategy, keys = "full", {"model.strategy": "full"}
        why.append("large and different: enough images to move every layer; train everything "
                   "(the pretrained weights are only a starting point)")
    return strategy, keys, why


def _sample_rows(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most n rows, stratified by class, in table order (all rows when there are no more than n)."""
    if len(labels) <= n:
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split
    stratify = labels if np.bincount(labels).min(initial=len(labels)) >= 2 else None
    rows, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=stratify, random_state=seed)
    return np.sort(rows)


def probe(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict | None:
    """Cross-validated accuracy of StandardScaler + LogisticRegression on (x, y), the majority-class rate and
    the lift (acc - base) / (1 - base); None when some class has fewer than 2 images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    counts = np.bincount(y)
    counts = counts[counts > 0]
    folds = int(min(PROBE_FOLDS, counts.min()))
    if folds < 2 or len(counts) < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=1000))
    acc = float(cross_val_score(model, np.asarray(x), y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed)
                                ).mean())
    base = float(counts.max() / counts.sum())
    return {"accuracy": acc, "base": base, "lift": (acc - base) / (1 - base)}


def measure_similarity(recipe: Recipe, sources=None) -> dict:
    """Probes and ImageNet-head statistics on a sample of the labelled images (see the module docstring)."""
    import torch
    from kit.data import load_sources
    from kit.features import cached_embeddings
    from kit.models.backbone import CutBackbone, build_model, model_data_config, pretrained_overlay
    from kit.models.strategies import stage_groups
    from kit.runtime import resolve_amp, resolve_device

    spec = recipe.model.model_copy(update={"strategy": "full", "cut_at": None})
    sources = sources or load_sources(recipe.data, recipe.task)
    table = sources.train.subset(_sample_rows(sources.train.labels, ADVISE_SAMPLE, recipe.data.seed))
    device = resolve_device(recipe.train.device)
    overlay = pretrained_overlay(spec, recipe.augment)

    def pretrained():  # timm's own 1000-class head, for the ImageNet statistics
        return build_model(spec, None, overlay)

    model, note = pretrained()
    cfg = model_data_config(model)
    common = dict(backbone=spec.backbone, weights=spec.weights, batch_size=recipe.train.batch_size * 2,
                  num_workers=recipe.data.num_workers if isinstance(recipe.data.num_workers, int) else 0, device=device, amp_dtype=resolve_amp(recipe.train.amp, device))
    x = cached_embeddings(model.to(device), table, cfg, cut_at=None, **common).views["none"]
    early = next((i for i, f in enumerate(model.feature_info) if f["reduction"] >= EARLY_REDUCTION),
                 len(model.feature_info) // 2)
    m = {"n_sampled": len(table), "weights": note, "early_stage": early, "n_stages": len(stage_groups(model))}
    head = model.get_classifier()
    if note.startswith("none"):
        m["note"] = "random weights: nothing pretrained to be similar to"
    elif getattr(head, "out_features", None) == 1000 and "classifier not loaded" not in note:
        with torch.inference_mode():
            probs = torch.softmax(head.cpu()(torch.from_numpy(np.array(x))).float(), 1).numpy()
        m["imagenet_max_prob"] = float(probs.max(1).mean())
        m["imagenet_entropy"] = float((-(probs * np.log(np.maximum(probs, 1e-12))).sum(1) / math.log(1000)).mean())
    cut = CutBackbone(pretrained()[0], early, 1000).to(device)
    x_early = cached_embeddings(cut, table, cfg, cut_at=early, **common).views["none"]
    for name, features in (("", x), ("_early", x_early)):
        result = probe(features, table.labels, seed=recipe.data.seed)
        if result is not None:
            m.update({f"probe_accuracy{name}": result["accuracy"], f"probe_lift{name}": result["lift"]})
            m["probe_base"] = result["base"]
    return m


def advise(recipe: Recipe, sources=None) -> Advice:
    """Measure, then decide: the strategy, the recipe keys that set it, the measurements and the reasons."""
    from kit.data import load_sources
    sources = sources or load_sources(recipe.data, recipe.task)
    n_images, n_classes = len(sources.train), len(sources.train.classes)
    m = {"n_images": n_images, "n_classes": n_classes, **measure_similarity(recipe, sources)}
    strategy, keys, why = decide(n_images, n_classes, m, n_stages=m.get("n_stages"))
    return Advice(strategy, keys, m, why)


ADVICE_FORMAT = 1  # bump when measurements or thresholds change: cached advice is then measured again


def _advice_key(recipe: Recipe) -> str:
    from kit.features import describe_weights
    data = {k: v for k, v in recipe.data.model_dump(mode="json").items() if k != "num_workers"}
    parts = {"format": ADVICE_FORMAT, "data": data, "backbone": recipe.model.backbone,
             "weights": describe_weights(recipe.model.backbone, recipe.model.weights),
             "input_size": recipe.augment.input_size, "crop_pct": recipe.augment.crop_pct}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


ADVICE_SCHEMA = {"strategy": str, "recipe_keys": dict, "measurements": dict, "reasoning": [str]}


def cached_advice(recipe: Recipe, sources=None) -> Advice:
    """advise(recipe), measured once per (data, backbone, weights, input transform) and kept in
    $KIT_CACHE_DIR/advice/ (JSON), so that plans of the same data and backbone (tuning trials) resolve alike.
    Called by kit.plan only: a planned member never resolves `auto` again."""
    from kit.features import kit_cache_dir
    from kit.readers import read_json
    from kit.rundir import write_json_atomic
    path = kit_cache_dir() / "advice" / f"{_advice_key(recipe)}.json"
    if path.is_file():
        return Advice(**read_json(path, fix="remove it (the advisor measures again)", schema=ADVICE_SCHEMA))
    advice = advise(recipe, sources)
    write_json_atomic(path, asdict(advice))
    return advice


def format_advice(advice: Advice) -> list[str]:
    """Printable lines: measurements, reasoning, and the recipe keys as YAML."""
    import yaml
    lines = ["measurements:"]
    lines += [f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}" for k, v in advice.measurements.items()]
    lines += ["reasoning:"] + [f"  - {r}" for r in advice.reasoning]
    nested: dict = {}
    for key, value in advice.recipe_keys.items():
        nested = set_path(nested, key, value)
    lines += [f"strategy: {advice.strategy}; recipe keys it would set:"]
    lines += ["  " + line for line in yaml.safe_dump(nested, sort_keys=False).splitlines()]
    return lines


def main(argv=None) -> int:
    """python -m kit.advise RECIPE [--set key=value ...]"""
    import argparse
    from kit.recipe import load_recipe
    p = argparse.ArgumentParser(prog="kit advise", description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        advice = advise(load_recipe(args.recipe, args.overrides))
    except RecipeError as e:
        print(f"error: {e}")
        return 2
    print("\n".join(format_advice(advice)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
