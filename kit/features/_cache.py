"""The embedding cache of kit.features: entry keys, streaming extraction into `.tmp-*` folders, the `complete`
marker and loading (memory-mapped)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit.errors import UnsafeFileError
from kit.recipe import RecipeError
from kit.readers import read_npy
from kit.rundir import publish_dir, remove_stale_tmp, sha256_file
from kit.runtime import cache_dir

CACHE_FORMAT = 1  # bump when the entry layout or the meaning of a key part changes
TRANSFORM_KEYS = ("input_size", "crop_pct", "mean", "std", "interpolation")
# Fixed views of each training image cached as extra rows (model.head_views = how many, from the left).
VIEWS = ("none", "hflip", "zoom", "zoom_hflip")
ZOOM = 0.875  # `zoom`: the centre 87.5% of the eval crop, resized back to the input size


# ---------------------------------------------------------------- cache keys

kit_cache_dir = cache_dir  # kit's one cache root ($KIT_CACHE_DIR), shared with the channels_last timings


def cache_root() -> Path:
    return kit_cache_dir() / "embeddings"


def _file_sha256(path) -> str:
    st = os.stat(path)
    return _sha256_of(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:  # once per version of a weights file (~0.1 s / 20 MB)
    return sha256_file(path)


def describe_weights(backbone: str, weights: str) -> str:
    """What the weights are, for the cache key: 'none', 'hub:<hf id>', 'offline:<sha256>', 'file:<sha256>'."""
    from kit.models.pretrained import offline_weights_file, resolve_weights
    source = resolve_weights(backbone, weights)
    if source == "none":
        return "none"
    if source == "hub":
        import timm
        cfg = timm.models.get_pretrained_cfg(backbone)
        return f"hub:{getattr(cfg, 'hf_hub_id', None) or backbone}"
    if source == "offline":
        return f"offline:{_file_sha256(offline_weights_file(backbone))}"
    return f"file:{_file_sha256(source)}"


def model_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}\0".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def image_set_digest(table) -> str:
    """sha256 of the ids and images of a table: file path, size and mtime, or the bytes of in-memory arrays."""
    h = hashlib.sha256()
    for image_id, item in zip(table.ids, table.items):
        h.update(f"{image_id}\0".encode())
        if isinstance(item, np.ndarray):
            h.update(f"{item.shape}{item.dtype}\0".encode())
            h.update(np.ascontiguousarray(item).data)
        else:
            st = os.stat(item)
            h.update(f"{os.path.abspath(item)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        h.update(b"\n")
    return h.hexdigest()


def embedding_key(backbone: str, weights: str, cut_at: int | None, cfg: dict, images: str, view: str = "none",
                  precision: str = "float32") -> str:
    """The entry name: sha256 of everything the embeddings depend on (`weights` as `describe_weights` gives it,
    `images` as `image_set_digest` gives it, `cfg` the eval transform of kit.data.resolve_data_config)."""
    import timm
    parts = {"format": CACHE_FORMAT, "backbone": backbone, "weights": weights, "cut_at": cut_at,
             "transform": {k: cfg[k] for k in TRANSFORM_KEYS}, "images": images, "view": view,
             "precision": precision, "timm": timm.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def feature_views(head_views: int) -> tuple[str, ...]:
    if not 1 <= head_views <= len(VIEWS):
        raise RecipeError(f"model.head_views={head_views}: use 1..{len(VIEWS)} (views {', '.join(VIEWS)})")
    return VIEWS[:head_views]


# ---------------------------------------------------------------- extraction

@dataclass
class CachedEmbeddings:
    views: dict  # view -> float32 [N, D], memory-mapped from the cache, rows in table order
    keys: dict  # view -> entry name
    computed: tuple  # views extracted by this call (the others were cache hits)
    seconds: float


def read_entry(path: Path, n_rows: int | None = None) -> np.ndarray | None:
    """The embeddings of a complete entry (memory-mapped), or None: missing, unfinished or of another size. A
    corrupt or planted embeddings.npy (objects, another dtype or shape) is an UnsafeFileError naming it."""
    if not (path / "complete").is_file():
        return None
    x = read_npy(path / "embeddings.npy", kinds="f", ndim=2, mmap=True,
                 fix=f"remove the cache entry {path} (kit extracts its embeddings again)")
    return x if n_rows is None or len(x) == n_rows else None


def _complete(path: Path) -> bool:
    try:
        return read_entry(path) is not None
    except UnsafeFileError:  # a corrupt entry where a finished one is published: replaced
        return False


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the classifier sees: timm's forward_head(pre_logits=True), also on kit's CutBackbone."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def view_batch(x: torch.Tensor, view: str) -> torch.Tensor:
    if view.startswith("zoom"):
        s = x.shape[-1]
        c = int(round(s * ZOOM))
        top, left = (x.shape[-2] - c) // 2, (s - c) // 2
        x = nn.functional.interpolate(x[..., top:top + c, left:left + c], size=x.shape[-2:], mode="bilinear",
                                      align_corners=False)
    return x.flip(-1) if view.endswith("hflip") else x


def cached_embeddings(model: nn.Module, table, cfg: dict, *, backbone: str, weights: str, cut_at: int | None,
                      views=("none",), batch_size: int = 64, num_workers: int = 0, device="cpu",
                      channels_last: bool = False, amp_dtype=None, loader=None) -> CachedEmbeddings:
    """Embeddings of every image of `table` under the eval transform `cfg`, from the cache or extracted now
    (then stored). `model` must be the backbone the other arguments describe. `loader` (tests): yields
    (images, labels, rows) in table order instead of the default eval loader."""
    t0 = time.perf_counter()
    root = cache_root()
    precision = str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32"
    digest, described = image_set_digest(table), describe_weights(backbone, weights)
    if described == "none":  # random weights: the embeddings are those of this very init, not of the name
        described = f"none:{model_digest(model)}"
    keys = {v: embedding_key(backbone, described, cut_at, cfg, digest, v, precision) for v in views}
    found = {v: read_entry(root / k, len(table)) for v, k in keys.items()}
    missing = [v for v in views if found[v] is None]
    if missing:
        if loader is None:
            from kit.data import ImageDataset, create_eval_transform, make_loader
            loader = make_loader(ImageDataset(table, np.arange(len(table)), create_eval_transform(cfg)), batch_size,
                                 shuffle=False, num_workers=num_workers, seed=0)
        meta = {"backbone": backbone, "weights": described, "cut_at": cut_at, "images": digest, "n": len(table),
                "transform": {k: cfg[k] for k in TRANSFORM_KEYS}, "precision": precision}
        _extract(model, loader, len(table), {v: root / keys[v] for v in missing}, meta, torch.device(device),
                 channels_last, amp_dtype)
        found.update({v: read_entry(root / keys[v], len(table)) for v in missing})
    return CachedEmbeddings(found, keys, tuple(missing), time.perf_counter() - t0)


def _extract(model, loader, n: int, targets: dict, meta: dict, device, channels_last: bool, amp_dtype) -> None:
    """Stream the features of each view into its own `.tmp-*` folder, then rename the folders into place."""
    root = next(iter(targets.values())).parent
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root)
    tmps = {v: Path(tempfile.mkdtemp(prefix=f".tmp-{p.name[:16]}-", dir=root)) for v, p in targets.items()}
    for tmp in tmps.values():
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared by the users of a machine
    files, written, seconds = {}, 0, time.perf_counter()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, _, rows in loader:
                rows = np.asarray(rows)
                if not np.array_equal(rows, np.arange(written, written + len(rows))):
                    raise RuntimeError(f"the extraction loader must yield rows in table order; got rows "
                                       f"{rows[:3].tolist()}... after {written} rows")
                x = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
                for view, tmp in tmps.items():
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        feats = pooled_features(model, view_batch(x, view).contiguous(memory_format=fmt))
                    feats = feats.float().cpu().numpy()
                    if view not in files:  # the header needs the feature width: written with the first batch
                        files[view] = open(tmp / "embeddings.npy", "wb")
                        np.lib.format.write_array_header_1_0(files[view], {
                            "descr": "<f4", "fortran_order": False, "shape": (n, feats.shape[1])})
                    files[view].write(np.ascontiguousarray(feats, dtype="<f4").data)
                written += len(rows)
        if written != n:
            raise RuntimeError(f"the extraction loader yielded {written} rows, the table has {n}")
        seconds = time.perf_counter() - seconds
        for view, tmp in tmps.items():
            f = files.pop(view)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            (tmp / "meta.json").write_text(json.dumps({**meta, "view": view, "seconds": seconds}, indent=2))
            (tmp / "complete").write_text("")  # last: an entry without it is never read
            publish_dir(tmp, targets[view], _complete)
    finally:
        model.train(was_training)
        for f in files.values():
            f.close()
        for tmp in tmps.values():
            shutil.rmtree(tmp, ignore_errors=True)
