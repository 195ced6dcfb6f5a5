"""kit.recipe against hostile input: random malformed recipes (random nested YAML values over the real section and
key names, and random junk) and random `--set` strings. load_recipe either returns a recipe or raises a
RecipeError that names the file; any other exception is a bug (it would reach the user as a traceback).

Hypothesis drives it; no example database is written (the working tree is shared), and each test keeps to a
few seconds on two cores: the recipes stay small and every backbone named is a tiny timm test model.
"""
from __future__ import annotations

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from kit.recipe import BLEND_METHODS, TTA_MODES, Recipe, RecipeError, Spec, load_recipe, recipe_hash  # noqa: E402

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
keys = st.one_of(st.sampled_from(TOP_KEYS + DOTTED + ["", "a.b", "lrr"]), junk_text, st.integers(-2, 2),
                 st.booleans(), st.none())
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
    return st.one_of(PLAUSIBLE[key], values) if key in PLAUSIBLE else values


@st.composite
def section(draw, name: str):
    fields = list(SECTIONS[name].model_fields)
    chosen = draw(st.lists(st.sampled_from(fields) | keys, max_size=4, unique_by=repr))
    return {k: draw(value_for(f"{name}.{k}")) for k in chosen}


@st.composite
def backbones(draw):
    entries = []
    for _ in range(draw(st.integers(0, 2))):
        names = draw(st.lists(st.sampled_from(["model", "train", "augment", "tta", "data"]) | keys, max_size=2,
                              unique_by=repr))
        entries.append({n: draw(section(n) if n in SECTIONS else values) for n in names})
    return entries


@st.composite
def recipes(draw):
    """A mapping over the real section names (mostly), each a mapping over the real keys (mostly)."""
    raw = {"data": {"source": "digits"}, "model": {"backbone": "test_resnet"}} if draw(st.booleans()) else {}
    for name in draw(st.lists(st.sampled_from(TOP_KEYS) | keys, max_size=4, unique_by=repr)):
        if name in SECTIONS:
            raw[name] = draw(st.one_of(section(name), section(name), values))
        else:
            raw[name] = draw(value_for(str(name)))
    if draw(st.integers(0, 4)) == 0:
        raw.setdefault("ensemble", {})
        if isinstance(raw["ensemble"], dict):
            raw["ensemble"]["backbones"] = draw(backbones())
    return raw


def _yaml_text(value) -> str:
    try:
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:  # not representable (PyYAML refuses some keys): the value's repr is junk YAML, fine too
        return repr(value)


override_keys = st.one_of(st.sampled_from(DOTTED + ["search.params.train.lr.low", "augment.train.0.p", "train..lr",
                                                    "ensemble.backbones.0.model.backbone", "", "name.x"]),
                          st.builds(".".join, st.lists(st.sampled_from(TOP_KEYS + DOTTED) | junk_text, max_size=4)))
override_values = st.one_of(values.map(lambda v: _yaml_text(v).strip().replace("\n", " ")), junk_text,
                            st.sampled_from(["[0.1", "{a: 1", "'x", "1e-3", ".nan", "*a", "!!python/none x", ""]))
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", override_keys, override_values), junk_text),
                     max_size=3)


_last_error = [""]  # the message of the last RecipeError (for the reachability test below)


def load_cleanly(path, text: str, over):
    """load_recipe, accepting a recipe or a RecipeError that names the file; anything else propagates."""
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
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


@SETTINGS
@given(raw=recipes(), over=overrides)
def test_malformed_recipes_fail_cleanly(recipe_path, raw, over):
    load_cleanly(recipe_path, _yaml_text(raw), over)


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
@given(over=st.lists(st.builds(lambda k, v: f"{k}={v}", override_keys, override_values), min_size=1, max_size=3))
def test_random_overrides_on_a_valid_recipe_fail_cleanly(recipe_path, over):
    load_cleanly(recipe_path, "data: {source: digits}\nmodel: {backbone: test_resnet}\n", over)


@pytest.mark.parametrize("outcome", ["loads", "model.cut_at", "augment.train", "search.params", "--set"])
def test_the_random_recipes_reach_every_outcome(recipe_path, outcome):
    """The strategies are not refused at the first gate only: some recipes load, some fail in each deep check."""
    def reaches(example):
        raw, over = example
        try:
            r = load_cleanly(recipe_path, _yaml_text(raw), over)
        except Exception:
            return False  # the tests above report those
        return r is not None if outcome == "loads" else (r is None and _last_error[0].count(outcome) > 0)
    hypothesis.find(st.tuples(recipes(), overrides), reaches, settings=settings(SETTINGS, max_examples=2000))
