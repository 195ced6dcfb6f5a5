"""One reader per kind of file kit reads back: JSON (read_json, check_schema), .npz / .npy (read_npz, read_npy),
files of tensors (check_tensor_file, before torch or safetensors parse them) and CSV (read_csv).

    rec = read_json(path, fix="remove it to train the member again", schema={"member": str, "scores": dict})
    arrays = read_npz(path, {"ids": ("US", 1), "probs": ("f", 2)}, fix="predict again")

A corrupt, planted or foreign file is a KitError naming it and `fix` (one line, exit 2), never a traceback, and
nothing in it runs code: no pickle is ever loaded, and sizes, nesting, array headers and fields are checked before
anything is allocated or used. The writers are in kit.rundir.
"""
from __future__ import annotations

import json
from pathlib import Path

from kit.errors import DataError, RunDirError, UnsafeFileError

MAX_JSON_BYTES = 64 << 20  # a bundle's manifest, the largest JSON kit writes, holds a stacker's coefficients
MAX_JSON_DEPTH = 64  # levels of nesting; kit's own files use fewer than 10


def read_json(path, *, fix: str = "remove it and run the command again (kit writes it anew)", schema=None,
              max_bytes: int = MAX_JSON_BYTES):
    """A JSON file kit wrote, read back: at most `max_bytes`, nested at most MAX_JSON_DEPTH deep, and, with `schema`
    (see check_schema), of the expected shape; UnsafeFileError naming the file and `fix` otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{size:,} bytes, more than the {max_bytes:,} such a file holds")
        data = json.loads(path.read_bytes().decode("utf-8"))
        _check_depth(data)
        if schema is not None:
            check_schema(data, schema)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; {fix}") from None
    except RecursionError:
        raise UnsafeFileError(f"cannot read {path}: nested too deeply to be a file kit wrote; {fix}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UnsafeFileError(f"cannot read {path}: {_why(e)}; {fix}") from None
    return data


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    if isinstance(e, json.JSONDecodeError):
        return f"not JSON ({text})"
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(e, OSError):
        return e.strerror or text
    return text


def _check_depth(data) -> None:
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


NUMBER = (int, float)


def check_schema(value, schema, where: str = "") -> None:
    """ValueError unless `value` has the shape of `schema`: a type or tuple of types (bool is no number), a dict
    {key: schema} of required keys ('key?' optional; '*' every other value), or [schema] for a list of them."""
    at = f" at {where}" if where else ""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ValueError(f"expected an object{at}, found {_kind(value)}")
        for key, sub in schema.items():
            name = key.rstrip("?")
            if key == "*":
                for k, v in value.items():
                    check_schema(v, sub, f"{where}.{k}" if where else str(k))
            elif name in value:
                check_schema(value[name], sub, f"{where}.{name}" if where else name)
            elif not key.endswith("?"):
                raise ValueError(f"no {name!r}{at}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ValueError(f"expected a list{at}, found {_kind(value)}")
        for i, v in enumerate(value):
            check_schema(v, schema[0], f"{where}[{i}]")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"expected {' or '.join(_type_name(t) for t in types)}{at}, found {_kind(value)}")


def _kind(value) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}")


def _type_name(t) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(t, t.__name__)


def read_npz(path, arrays: dict, *, fix: str) -> dict:
    """The arrays of an .npz kit wrote: {name: (dtype kinds, ndim)}, a name ending in '?' optional; numpy's kinds,
    e.g. 'U' strings, 'f' floats, 'iu' integers. No pickle (allow_pickle=False), each header checked against the
    bytes stored before anything is allocated; UnsafeFileError naming the file and `fix` otherwise."""
    import zipfile
    import numpy as np
    path = Path(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            names = {n[:-4]: z.getinfo(n) for n in z.namelist() if n.endswith(".npy")}
            for key, (kinds, ndim) in arrays.items():
                name = key.rstrip("?")
                if name not in names:
                    if key.endswith("?"):
                        continue
                    raise ValueError(f"no array {name!r} (it holds {sorted(names) or 'none'})")
                info = names[name]
                with z.open(info) as f:
                    _check_npy_header(f, info.file_size, kinds, ndim, name)
                with z.open(info) as f:
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; {fix}") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise UnsafeFileError(f"cannot read {path}: {_why(e)}; {fix}") from None
    return out


def read_npy(path, *, kinds: str, ndim: int, fix: str, mmap: bool = False):
    """One .npy array kit wrote (memory-mapped with mmap), checked as read_npz checks each of its arrays."""
    import numpy as np
    path = Path(path)
    try:
        with open(path, "rb") as f:
            _check_npy_header(f, path.stat().st_size, kinds, ndim, path.name)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; {fix}") from None
    except (OSError, ValueError, EOFError) as e:
        raise UnsafeFileError(f"cannot read {path}: {_why(e)}; {fix}") from None


def _check_npy_header(f, size: int, kinds: str, ndim: int, name: str) -> None:
    import numpy as np
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"array {name!r} has an unknown .npy version {version}")
    shape, _, dtype = read(f)
    if dtype.hasobject or dtype.kind not in kinds:
        raise ValueError(f"array {name!r} holds {'Python objects' if dtype.hasobject else dtype.str}, not "
                         f"{'/'.join(kinds)} values")
    allowed = ndim if isinstance(ndim, tuple) else (ndim,)
    if len(shape) not in allowed:
        raise ValueError(f"array {name!r} has {len(shape)} dimensions, not {' or '.join(map(str, allowed))}")
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize > size:
        raise ValueError(f"array {name!r} claims {count * dtype.itemsize:,} bytes in {size:,}: truncated")


def read_csv(path, *, fix: str, **kwargs):
    """pandas.read_csv of a CSV kit reads (labels, a sample submission, folds.csv, ids to predict), every cell a
    string unless `kwargs` say otherwise: a file that is not CSV (binary, another encoding, ragged rows) is a
    DataError naming it and `fix`, never pandas' traceback."""
    import pandas as pd
    kwargs = {"dtype": str, "keep_default_na": False, **kwargs}
    path = Path(path)
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a CSV file; {fix}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as e:
        why = e.reason if isinstance(e, UnicodeDecodeError) else " ".join(str(e).split())[:200]
        raise DataError(f"cannot read {path} as CSV ({type(e).__name__}: {why}); {fix}") from None


TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's format before torch 1.6


def check_tensor_file(path, *, fix: str, legacy: bool = True) -> Path:
    """`path` looks like a file of tensors before anything parses it: a torch zip archive (torch.save), a
    .safetensors file (its JSON header), or with `legacy` torch's format before 1.6 (offline weight packages);
    UnsafeFileError naming the file and `fix` otherwise (a text file, /etc/passwd, a plain pickle)."""
    import zipfile
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 2 <= n <= min(path.stat().st_size - 8, 100 << 20):
                    raise ValueError("its header length is not that of a safetensors file")
                header = json.loads(f.read(n).decode("utf-8"))
                if not isinstance(header, dict):
                    raise ValueError("its header is not a JSON object")
            return path
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(name.endswith("data.pkl") for name in z.namelist()):
                    return path
            raise ValueError("a zip file, but not a torch archive: no data.pkl")
        with open(path, "rb") as f:
            head = f.read(len(TORCH_LEGACY_MAGIC))
        if legacy and head == TORCH_LEGACY_MAGIC:
            return path
        if head[:1] == b"\x80":
            raise UnsafeFileError(f"{path} is a pickle that is not a torch file of tensors (unpickling it could run "
                                  f"code); kit loads only tensors: {fix}")
        raise ValueError("not a torch zip archive (torch.save) nor a .safetensors file")
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; {fix}") from None
    except IsADirectoryError:
        raise UnsafeFileError(f"{path} is a folder, not a file of tensors; {fix}") from None
    except (OSError, ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        raise UnsafeFileError(f"{path} is corrupt or not a torch file of tensors ({_why(e)}); kit loads only "
                              f"tensors: {fix}") from None
