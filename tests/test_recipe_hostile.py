"""kit.recipe against hostile input: random malformed recipes (random nested YAML values over the real section and
key names, and random junk) and random `--set` strings. load_recipe either returns a recipe or raises a
RecipeError that names the file; any other exception is a bug (it would reach the user as a traceback).

Hypothesis drives it; no example database is written (the working tree is shared), and each test keeps to a
few seconds on two cores: the recipes stay small and every backbone named is a tiny timm test model.
"""
from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from kit.recipe import BLEND_METHODS, TTA_MODES, Recipe, RecipeError, Spec, load_recipe, recipe_hash

SECTIONS = {name: f.annotation for name, f in Recipe.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, Spec)}
TOP_KEYS = list(Recipe.model_fields)
DOTTED = [f"{s}.{k}" for s, cls in SECTIONS.items() for k in cls.model_fields] + TOP_KEYS
SETTINGS = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

junk_text = st.text(max_size=12)
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-3, 10), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    junk_text,
    st.sampled_from(["", ".", "..", "/", "auto", "none", "cpu", "digits", "a/b", "\0", "x" * 300, "2020-01-01",
                     "test_resnet", "resnet1", *TTA_MODES[:3], *BLEND_METHODS[:2]]),
)
# mostly the real names, sometimes junk, now and then a key YAML reads as a number, boolean or null
real_keys = st.sampled_from(TOP_KEYS + [k.split(".")[1] for k in DOTTED if "." in k] + ["", "a.b", "lrr", 1, True, None])
keys = st.one_of(real_keys, real_keys, real_keys, junk_text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=10)

# Near-valid values for keys whose checks go deep (timm, albumentations, search spaces), so that those run too.
transform_names = st.sampled_from(["Affine", "HorizontalFlip", "RandomResizedCrop", "ColorJitter", "NoOp",
                                   "BasicTransform", "ImageOnlyTransform", "HorizontalFlp", "Compose", "os"])
transform_params = st.dictionaries(st.sampled_from(["p", "rotate", "rotat", "scale", "size", "brightness", "strict",
                                                    "ratio", "height"]) | keys, values, max_size=3)
transforms = st.lists(st.one_of(st.dictionaries(transform_names, transform_params | values, min_size=1, max_size=2),
                                values), max_size=3)
search_param = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["float", "int", "categorical", "bogus"]), "low": scalars, "high": scalars,
    "log": st.booleans() | scalars, "step": scalars, "choices": st.lists(scalars, max_size=3) | values})
PLAUSIBLE = {
    "model.backbone": st.sampled_from(["test_resnet", "resnet10t", "test_efficientnet", "resnet1", "no_such_net"]),
    "model.cut_at": st.integers(-2, 8) | st.none(),
    "model.frozen_stages": st.integers(-1, 8),
    "model.strategy": st.sampled_from(["feature_extract", "finetune", "gradual", "full", "cut_at", "freeze"]),
    "model.weights": st.sampled_from(["auto", "hub", "offline", "none", "missing.pth", "/", "x" * 300]),
    "augment.train": transforms,
    "augment.input_size": st.integers(-5, 10**6),
    "tta.resize": st.integers(-5, 10**6) | st.none(),
    "data.digits_size": st.integers(-5, 10**6),
    "data.source": st.sampled_from(["digits", "imagefolder", "kaggle", "csv"]),
    "data.root": st.sampled_from([".", "/", "/no/such/folder", "a" * 300, "\0"]) | scalars,
    "train.device": st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "mps", "banana", "cuda:x", "gpu"]),
    "train.lr": st.floats(allow_nan=True, allow_infinity=True) | scalars,
    "tta.modes": st.lists(st.sampled_from(TTA_MODES + ("spin",)), max_size=3),
    "search.params": st.dictionaries(st.sampled_from(["train.lr", "model.backbone", "nope.x", "", "train"]) | keys,
                                     search_param | values, max_size=2),
    "ensemble.seeds": st.lists(st.integers(-2, 2**33), max_size=3) | values,
}


def value_for(key: str):
    return st.one_of(PLAUSIBLE[key], PLAUSIBLE[key], values) if key in PLAUSIBLE else values


@st.composite
def section(draw, name: str):
    fields = st.sampled_from(list(SECTIONS[name].model_fields))
    chosen = draw(st.lists(st.one_of(fields, fields, fields, keys), max_size=3, unique_by=repr))
    return {k: draw(value_for(f"{name}.{k}")) for k in chosen}


@st.composite
def backbones(draw):
    entries = []
    for _ in range(draw(st.integers(0, 2))):
        names = draw(st.lists(st.sampled_from(["model", "train", "augment", "tta", "data"]) | keys, max_size=2,
                              unique_by=repr))
        entries.append({n: draw(section(n) if n in SECTIONS else values) for n in names})
    return entries


DEEP = [k for k in PLAUSIBLE if "." in k and k.split(".")[0] in SECTIONS]


@st.composite
def recipes(draw):
    """A recipe file's mapping: either a valid start with near-valid values at a few keys whose checks go deep, or
    random sections (mostly the real names, each a mapping over mostly the real keys)."""
    raw = {"data": {"source": "digits"}, "model": {"backbone": "test_resnet"}} if draw(st.integers(0, 3)) else {}
    if draw(st.booleans()):
        for key in draw(st.lists(st.sampled_from(DEEP), min_size=1, max_size=3, unique=True)):
            name, k = key.split(".")
            raw.setdefault(name, {})[k] = draw(PLAUSIBLE[key])
        if "cut_at" in raw.get("model", {}) and draw(st.booleans()):
            raw["model"]["strategy"] = "cut_at"
        return raw
    top = st.one_of(st.sampled_from(TOP_KEYS), st.sampled_from(TOP_KEYS), keys)
    for name in draw(st.lists(top, max_size=3, unique_by=repr)):
        raw[name] = draw(st.one_of(section(name), section(name), section(name), values) if name in SECTIONS
                         else value_for(str(name)))
    if draw(st.integers(0, 4)) == 0:
        raw.setdefault("ensemble", {})
        if isinstance(raw["ensemble"], dict):
            raw["ensemble"]["backbones"] = draw(backbones())
    return raw


def _dumpable(value) -> bool:
    try:
        yaml.safe_dump(value)
        return True
    except yaml.YAMLError:
        return False


def _yaml_text(value) -> str:
    try:
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:  # not representable (PyYAML refuses some keys): the value's repr is junk YAML, fine too
        return repr(value)


override_keys = st.one_of(st.sampled_from(DOTTED), st.sampled_from(DOTTED),
                          st.sampled_from(["search.params.train.lr.low", "augment.train.0.p", "train..lr",
                                           "ensemble.backbones.0.model.backbone", "", "name.x", "search.params"]),
                          st.builds(".".join, st.lists(st.sampled_from(TOP_KEYS + DOTTED) | junk_text, max_size=4)))
override_values = st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
                                       .removesuffix("...").strip() if _dumpable(v) else repr(v)), junk_text,
                            st.sampled_from(["[0.1", "{a: 1", "'x", "1e-3", ".nan", "*a", "!!python/none x", ""]))
override = st.builds(lambda k, v: f"{k}={v}", override_keys, override_values)
overrides = st.one_of(st.just([]), st.lists(st.one_of(override, override, junk_text), max_size=2))


_last_error = [""]  # the message of the last RecipeError, for the tests that check which key it names


def load_cleanly(path, text: str, over):
    """load_recipe, accepting a recipe or a RecipeError that names the file; anything else propagates."""
    path.write_text(text, encoding="utf-8")
    try:
        r = load_recipe(path, over)
    except RecipeError as e:
        _last_error[0] = str(e)
        assert str(path) in str(e), f"message does not name the file: {e}"
        assert str(e).strip(), "empty message"
        return None
    # a recipe that loads is a whole one: it round-trips through its own dict and hashes
    assert Recipe.model_validate(r.to_dict()) == r
    assert len(recipe_hash(r)) == 16
    return r


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile") / "r.yaml"


def test_malformed_recipes_fail_cleanly(recipe_path):
    outcomes = {"loads": 0, "refused": 0}

    @SETTINGS
    @given(raw=recipes(), over=overrides)
    def check(raw, over):
        outcomes["refused" if load_cleanly(recipe_path, _yaml_text(raw), over) is None else "loads"] += 1
    check()
    assert all(outcomes.values()), outcomes  # not every recipe is refused at the first gate


@pytest.mark.parametrize("key", DEEP)
def test_near_valid_values_fail_cleanly_in_the_deep_checks(recipe_path, key):
    """A valid recipe with near-valid values at one key whose check goes deep (timm, albumentations, the search
    space...): each example reaches that check, and some are refused by it, naming the key."""
    named = []
    name, k = key.split(".")

    @settings(SETTINGS, max_examples=25)
    @given(value=PLAUSIBLE[key], cut=st.booleans())
    def check(value, cut):
        raw = {"data": {"source": "digits"}, "model": {"backbone": "test_resnet"}}
        raw.setdefault(name, {})[k] = value
        if cut and key == "model.cut_at":
            raw["model"]["strategy"] = "cut_at"
        if load_cleanly(recipe_path, _yaml_text(raw), []) is None:
            named.append(f"'{key}" in _last_error[0] or f"{key}[" in _last_error[0])
    check()
    assert any(named), f"no example was refused naming {key}"


@SETTINGS
@given(text=st.one_of(st.text(max_size=60),
                      st.lists(st.sampled_from(["data:", "  source: digits", "train: {lr: [", "- a", "a: &x [*x]",
                                                "model: {cut_at: 99}", "? [1, 2]\n: 3", "!!binary aGk=", "{", ":",
                                                "\t", "name: !!set {a}", "%YAML 1.1\n---", "...", "x: *y", "#"]),
                               max_size=6).map("\n".join)),
       over=overrides)
def test_random_text_fails_cleanly(recipe_path, text, over):
    load_cleanly(recipe_path, text, over)


@SETTINGS
@given(over=st.lists(override, min_size=1, max_size=3))
def test_random_overrides_on_a_valid_recipe_fail_cleanly(recipe_path, over):
    load_cleanly(recipe_path, "data: {source: digits}\nmodel: {backbone: test_resnet}\n", over)
