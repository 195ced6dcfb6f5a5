"""kit.readers, the one reader per kind of file kit reads back, and kit.rundir's writers of files a user names: each
refusal is a KitError naming the file and the fix, and nothing read runs code or allocates what a header claims."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from kit.errors import DataError, KitError, RunDirError, UnsafeFileError
from kit.readers import MAX_JSON_DEPTH, check_schema, check_tensor_file, read_csv, read_json, read_npz
from kit.rundir import write_if_changed, write_new_file


def test_read_json_limits_size_depth_and_shape(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"a": 1}))
    assert read_json(p, schema={"a": int}) == {"a": 1}
    with pytest.raises(UnsafeFileError, match=r"x\.json: .*more than the 4 such a file holds; FIX"):
        read_json(p, fix="FIX", max_bytes=4)
    p.write_text("[" * (MAX_JSON_DEPTH + 2) + "]" * (MAX_JSON_DEPTH + 2))
    with pytest.raises(UnsafeFileError, match="nested more than 64 levels deep"):
        read_json(p)
    p.write_text(json.dumps({"a": True}))
    with pytest.raises(UnsafeFileError, match="expected an integer at a, found a boolean"):
        read_json(p, schema={"a": int})
    with pytest.raises(RunDirError, match="is missing"):
        read_json(tmp_path / "none.json")


def test_check_schema_reads_nested_shapes():
    schema = {"m": [{"n": str}], "s": {"*": {"*": (int, float)}}, "o?": (str, type(None))}
    check_schema({"m": [{"n": "a"}], "s": {"none": {"acc": 0.5}}}, schema)
    with pytest.raises(ValueError, match=r"expected a string at m\[0\]\.n"):
        check_schema({"m": [{"n": 1}], "s": {}}, schema)
    with pytest.raises(ValueError, match=r"expected an integer or a number at s\.none\.acc, found a string"):
        check_schema({"m": [], "s": {"none": {"acc": "x"}}}, schema)


def test_read_npz_checks_headers_before_reading(tmp_path):
    p = tmp_path / "p.npz"
    np.savez(p, probs=np.zeros((2, 3), np.float32))
    assert read_npz(p, {"probs": ("f", 2)}, fix="FIX")["probs"].shape == (2, 3)
    header = io.BytesIO()  # an array header claiming 10**12 floats over 100 bytes: refused, nothing allocated
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("probs.npy", header.getvalue() + b"\0" * 100)
    with pytest.raises(UnsafeFileError, match=r"claims 4,000,000,000,000 bytes in .*truncated; FIX"):
        read_npz(p, {"probs": ("f", 2)}, fix="FIX")


@pytest.mark.parametrize("content, words", [
    (b"root:x:0:0:root:/root:/bin/bash\n", "not a torch zip archive"),
    (b"\x80\x04K\x01.", "is a pickle that is not a torch file of tensors"),
    ("ZIP", "no data.pkl"),
])
def test_check_tensor_file_refuses_what_is_not_tensors(tmp_path, content, words):
    p = tmp_path / "w.pt"
    if content == "ZIP":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("a.txt", "x")
    else:
        p.write_bytes(content)
    with pytest.raises(UnsafeFileError, match=words):
        check_tensor_file(p, fix="FIX")


def test_check_tensor_file_takes_torch_files(tmp_path):
    import torch
    torch.save({"w": torch.zeros(1)}, tmp_path / "new.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert check_tensor_file(tmp_path / "new.pt", fix="", legacy=False)
    assert check_tensor_file(tmp_path / "old.pt", fix="")  # offline weight packages are in this format
    with pytest.raises(UnsafeFileError):
        check_tensor_file(tmp_path / "old.pt", fix="", legacy=False)  # kit's own checkpoints are zip archives


def test_read_csv_names_the_file(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(b"id,label\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"cannot read .*t\.csv as CSV \(UnicodeDecodeError.*; FIX"):
        read_csv(p, fix="FIX")


def test_write_new_file_refuses_what_it_must_not_write(tmp_path):
    out = tmp_path / "a.csv"
    write_new_file(out, "1\n")
    with pytest.raises(RunDirError, match="already exists and was not overwritten; pass --force"):
        write_new_file(out, "2\n")
    write_new_file(out, "2\n", force=True)
    assert out.read_text() == "2\n"
    for path, words in ((tmp_path, "is a folder"), (tmp_path / "no" / "a.csv", "does not exist"),
                        ("/dev/null", "is not a plain file")):
        with pytest.raises(RunDirError, match=words):
            write_new_file(path, "x", force=True)
    with pytest.raises(RunDirError, match="which this command reads; it is never overwritten"):
        write_new_file(out, "3\n", force=True, protect=[out])
    assert out.read_text() == "2\n" and not (tmp_path / "no").exists()


def test_write_if_changed_leaves_the_same_content_alone(tmp_path):
    p = write_if_changed(tmp_path / "r.txt", "same\n")
    before = p.stat().st_mtime_ns, p.stat().st_ino
    write_if_changed(p, "same\n")
    assert (p.stat().st_mtime_ns, p.stat().st_ino) == before
    write_if_changed(p, "new\n")
    assert p.read_text() == "new\n" and isinstance(UnsafeFileError("x"), KitError)
