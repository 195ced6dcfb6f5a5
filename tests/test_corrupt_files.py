"""Every file kit reads back, corrupt, planted or foreign, is one line naming the file and the fix (exit 2), through
one reader per kind (kit.rundir: JSON, .npz/.npy, tensor files, CSV), and nothing planted runs."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from kit.bundle import export_bundle
from kit.cli import main
from kit.errors import UnsafeFileError
from kit.rundir import member_dir, pred_path, sha256_file
from test_inference import finished_run, make_kaggle

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads


class _Touch:
    """Unpickled, creates the marker file: proof that a planted pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    with finished_run(tmp_path_factory, "corrupt") as (base, recipe, root, _):
        yield recipe.run_dir, export_bundle(recipe.run_dir, base / "bundle"), root


@pytest.fixture
def run_dir(finished, tmp_path, monkeypatch):
    """A copy of the finished run of its own, to damage."""
    monkeypatch.setenv("KIT_CACHE_DIR", str(finished[0].parent.parent / "cache"))
    monkeypatch.chdir(tmp_path)
    return shutil.copytree(finished[0], tmp_path / "runs" / finished[0].name)


@pytest.fixture
def bundle(finished, tmp_path):
    return shutil.copytree(finished[1], tmp_path / "bundle")


def _fails_naming(capsys, args, path, *words) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    one = " ".join(err.split())
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in one and all(w in one for w in words), one
    return one


def _member(run_dir) -> str:
    return sorted(p.name for p in (run_dir / "members").iterdir())[0]


# ---------------------------------------------------------------- predictions (.npz)

@pytest.mark.parametrize("damage, words", [
    ("objects", ["holds Python objects"]),
    ("garbage", ["File is not a zip file"]),
    ("no_probs", ["no array 'probs'"]),
    ("probs_1d", ["'probs' has 1 dimensions, not 2"]),
    ("truncated", ["cannot read"]),
])
def test_a_damaged_prediction_file_is_one_line(run_dir, tmp_path, capsys, damage, words):
    path = pred_path(run_dir, _member(run_dir), "oof", "none")
    good = dict(np.load(path))
    marker = tmp_path / "ran"
    if damage == "objects":
        np.savez(path, **{**good, "probs": np.array([_Touch(marker)], dtype=object)})
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "no_probs":
        np.savez(path, **{k: v for k, v in good.items() if k != "probs"})
    elif damage == "probs_1d":
        np.savez(path, **{**good, "probs": good["probs"].ravel()})
    else:
        path.write_bytes(path.read_bytes()[:300])
    _fails_naming(capsys, ["submit", str(run_dir)], path, *words, "remove it and predict again")
    assert not marker.exists()


def test_an_object_array_in_the_embedding_cache_is_refused_unread(tmp_path):
    from kit.features import read_entry
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "complete").write_text("")
    np.save(entry / "embeddings.npy", np.array([_Touch(tmp_path / "ran")], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=r"embeddings\.npy: array 'embeddings.npy' holds Python objects.*"
                                              r"remove the cache entry"):
        read_entry(entry)
    np.save(entry / "embeddings.npy", np.zeros((4, 3), np.int64))  # not the floats kit writes
    with pytest.raises(UnsafeFileError, match="holds <i8, not f values"):
        read_entry(entry)
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- JSON: done.json, plan.json, report.json

@pytest.mark.parametrize("content, words", [
    (DEEP, ["nested too deeply"]),
    ('{"member": 1}', ["expected a string at member"]),
    ("[1, 2]", ["expected an object"]),
    ("{not json", ["not JSON"]),
    ("SCORES", ["expected an object at scores"]),
])
def test_a_damaged_done_json_is_one_line(run_dir, capsys, content, words):
    path = member_dir(run_dir, _member(run_dir)) / "done.json"
    if content == "SCORES":
        content = json.dumps({**json.loads(path.read_text()), "scores": "high"})
    path.write_text(content)
    _fails_naming(capsys, ["submit", str(run_dir)], path, *words, "to train member")


def test_a_done_json_of_another_member_is_refused(run_dir, capsys):
    a, b = sorted(p.name for p in (run_dir / "members").iterdir())[:2]
    shutil.copyfile(member_dir(run_dir, b) / "done.json", member_dir(run_dir, a) / "done.json")
    _fails_naming(capsys, ["submit", str(run_dir)], member_dir(run_dir, a) / "done.json", f"of member '{b}'")


@pytest.mark.parametrize("content, words", [(DEEP, ["nested too deeply"]), ("garbage", ["not JSON"]),
                                            ('{"format": 1, "members": 3}', ["not a plan this kit can read"])])
def test_a_damaged_plan_json_is_one_line(run_dir, capsys, content, words):
    (run_dir / "plan.json").write_text(content)
    _fails_naming(capsys, ["submit", str(run_dir)], run_dir / "plan.json", *words)


def test_a_damaged_report_json_is_one_line(run_dir, capsys):
    path = run_dir / "ensemble" / "report.json"
    report = json.loads(path.read_text())
    path.write_text(json.dumps({**report, "best_member_score": "high"}))
    _fails_naming(capsys, ["export", str(run_dir), str(run_dir.parent / "b")], path, "best_member_score",
                  "kit submit")


def test_a_damaged_folds_csv_is_one_line(run_dir, capsys):
    (run_dir / "folds.csv").write_bytes(b'id,label,fold\n"unclosed,1\n\xff\xfe\x00')
    _fails_naming(capsys, ["submit", str(run_dir)], run_dir / "folds.csv", "as CSV")


# ---------------------------------------------------------------- checkpoints and weights

def test_a_text_file_as_best_pt_is_one_line(run_dir, capsys):
    path = member_dir(run_dir, _member(run_dir)) / "best.pt"
    path.write_text("these are not the weights you are looking for\n")
    _fails_naming(capsys, ["export", str(run_dir), str(run_dir.parent / "b")], path,
                  "not a torch file of tensors", "delete it to retrain")


@pytest.mark.parametrize("weights", ["/etc/passwd", "TEXT", "ZIP"])
def test_model_weights_that_are_no_tensor_file_are_refused_by_kit_plan(tmp_path, capsys, weights):
    if weights == "TEXT":
        weights = tmp_path / "w.pth"
        weights.write_text("0" * 100)
    elif weights == "ZIP":
        import zipfile
        weights = tmp_path / "w.pt"
        with zipfile.ZipFile(weights, "w") as z:
            z.writestr("hello.txt", "not torch")
    if not os.path.isfile(weights):
        pytest.skip(f"{weights} is not here")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{source: digits}}\nmodel: {{backbone: test_resnet, weights: {weights}}}\n")
    _fails_naming(capsys, ["plan", str(recipe)], weights, "recipe key 'model.weights'", "not a torch")


# ---------------------------------------------------------------- bundles

def _refresh_checksum(bundle, rel):
    manifest = json.loads((bundle / "bundle.json").read_text())
    p = bundle / rel
    manifest["files"][rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def test_a_deeply_nested_bundle_json_is_one_line(bundle, finished, capsys, tmp_path):
    (bundle / "bundle.json").write_text(DEEP)
    _fails_naming(capsys, ["predict", str(bundle), "--images", str(finished[2] / "test"), "--output",
                           str(tmp_path / "p.csv")], bundle / "bundle.json", "nested too deeply")


@pytest.mark.parametrize("content", ["garbage {", DEEP, '{"format": 1, "members": [{"name": "../../x"}]}'])
def test_a_garbage_plan_json_with_a_refreshed_checksum_is_one_line(bundle, finished, capsys, tmp_path, content):
    (bundle / "plan.json").write_text(content)
    _refresh_checksum(bundle, "plan.json")
    _fails_naming(capsys, ["predict", str(bundle), "--images", str(finished[2] / "test"), "--output",
                           str(tmp_path / "p.csv")], bundle / "plan.json", "export the bundle again")


def test_a_bundle_manifest_of_the_wrong_shape_is_one_line(bundle, finished, capsys, tmp_path):
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["configs"][0]["members"] = "all of them"
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    _fails_naming(capsys, ["predict", str(bundle), "--images", str(finished[2] / "test"), "--output",
                           str(tmp_path / "p.csv")], bundle / "bundle.json", "expected a list at configs[0].members")


def test_a_member_folder_symlinked_out_of_the_bundle_is_refused(bundle, finished, capsys, tmp_path):
    member = sorted((bundle / "members").iterdir())[0]
    elsewhere = shutil.move(str(member), tmp_path / "elsewhere")  # the very same files, outside the bundle
    os.symlink(elsewhere, member)
    _fails_naming(capsys, ["predict", str(bundle), "--images", str(finished[2] / "test"), "--output",
                           str(tmp_path / "p.csv")], member, "is a symlink", "not a folder of the bundle")


# ---------------------------------------------------------------- paths in recipes

@pytest.mark.parametrize("output_dir", ["FILE", "/dev/null", "/proc/self"])
def test_an_output_dir_that_cannot_hold_runs_is_one_line(tmp_path, capsys, output_dir):
    if output_dir == "FILE":
        output_dir = tmp_path / "a_file"
        output_dir.write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"source": "digits"}, "output_dir": str(output_dir)}))
    for command in ("plan", "run"):
        _fails_naming(capsys, [command, str(recipe)], output_dir, "recipe key 'output_dir'", "set output_dir to")


def test_train_csv_outside_the_root_or_not_csv_is_one_line(tmp_path, capsys):
    root = make_kaggle(tmp_path / "kaggle")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"source": "kaggle", "root": str(root), "image_suffix": ".jpg",
                                               "train_csv": "/etc/passwd"}}))
    _fails_naming(capsys, ["plan", str(recipe)], "/etc/passwd", "recipe key 'data.train_csv'", "outside data.root")
    (root / "labels.csv").write_bytes(b'id,label\n"a,b\nc,d,e,f\n\xff\x00')
    recipe.write_text(yaml.safe_dump({"data": {"source": "kaggle", "root": str(root), "image_suffix": ".jpg",
                                               "train_csv": "labels.csv"}}))
    _fails_naming(capsys, ["plan", str(recipe)], root / "labels.csv", "as CSV", "data.train_csv")
