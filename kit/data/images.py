"""Decoding one image file into an HxWx3 uint8 RGB array, the same way for every source.

Choices made here, so that a model sees what a person sees in an image viewer:
- EXIF orientation is applied (phone photos are stored sideways with a rotate tag).
- Transparency (RGBA, LA, palette with a transparent colour) is composited on a white background, the
  way browsers and viewers show it; dropping alpha instead would expose whatever colour the transparent
  pixels happen to store (often black), which the model would learn as signal.
- 16-bit images are scaled by the range of their type (65535 -> 255, i.e. divided by 257), not clipped;
  Pillow's own convert("L") clips, which turns most 16-bit images white.
- A file that cannot be decoded raises ImageReadError naming the path; no other sample is substituted.
  (If some other code sets PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True, truncated files decode grey-padded.)
- An image of more than MAX_PIXELS is refused from its header, before any pixel is decoded (a decompression
  bomb: a 30000x30000 PNG is a few kB on disk and 2.7 GB as RGB), even where other code has switched off
  Pillow's own check (PIL.Image.MAX_IMAGE_PIXELS = None, common in notebooks).
`verify_image` decides the same as `read_image` at a fraction of the cost; kit.data.scan runs it on every file
before training.
"""
from __future__ import annotations

import struct

import numpy as np
from PIL import Image, ImageOps

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_WHITE = (255, 255, 255, 255)
# Pillow refuses images above twice its MAX_IMAGE_PIXELS (89,478,485): 178,956,970 pixels, a 13,377 px square,
# 537 MB as RGB uint8. kit keeps that limit whatever PIL.Image.MAX_IMAGE_PIXELS is set to.
MAX_PIXELS = 2 * 89_478_485
# verify_image decodes JPEGs at 1/8 size (libjpeg's DCT scaling): on a 2000x1500 photo 4.8 ms instead of 18.6 ms
# (baseline) and 21 ms instead of 39 ms (progressive) on this machine's CPU.
JPEG_DRAFT_SCALE = 8
# What Pillow raises on a bad file: the usual OSError/ValueError/SyntaxError, and on malformed headers also
# struct.error, IndexError and ZeroDivisionError (seen on fuzzed TIFF/ICO/BMP files).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, struct.error, IndexError,
                 ZeroDivisionError)


from kit.errors import ImageReadError  # noqa: E402  (re-exported: kit.data.images.ImageReadError)


def read_image(path) -> np.ndarray:
    """The image at `path` as an HxWx3 uint8 RGB array (see the module docstring for the conversions)."""
    try:
        with Image.open(path) as img:
            _check_size(img, path)
            img.load()
            img = _exif_transpose(img)
            return _to_rgb_array(img)
    except ImageReadError:
        raise
    except DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def verify_image(path) -> None:
    """Raise ImageReadError where read_image(path) would, more cheaply: every byte of the file is decoded
    (a truncated or corrupt file fails here, not in training) and converted to RGB, but JPEGs at 1/8 scale,
    which still entropy-decodes the whole stream, and without the EXIF rotation (whose errors are ignored)."""
    try:
        with Image.open(path) as img:
            _check_size(img, path)
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.width // JPEG_DRAFT_SCALE), max(1, img.height // JPEG_DRAFT_SCALE)))
            img.load()
            _to_rgb_array(img)
    except ImageReadError:
        raise
    except DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def _check_size(img: Image.Image, path) -> None:
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageReadError(f"cannot read image {path}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than kit's "
                             f"limit of {MAX_PIXELS / 1e6:.0f} (a decompression bomb, or a scan far larger than any "
                             f"backbone input); shrink it, or drop it from the data")


def load_item(item) -> np.ndarray:
    """A table item (a file path, or an HxWx3 uint8 array already in memory) as an HxWx3 uint8 array."""
    if isinstance(item, np.ndarray):
        return item
    return read_image(item)


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not lose the image; keep it as stored
        return img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        mode, img = "RGBA", img.convert("RGBA")
    if mode in _TRANSPARENT_MODES:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
    elif mode in _16BIT_MODES or mode.startswith("I;16") or mode == "I":
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    elif mode == "F":
        return _gray_to_rgb(_scale_float(np.asarray(img)))
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1 (0/255), P, CMYK, YCbCr: Pillow's conversions are exact enough
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    # Mode "I" (32-bit int) is how older Pillow and some TIFFs hold 16-bit data, so it gets the 16-bit range
    # too; values outside 0..65535 are clipped.
    a = np.clip(a.astype(np.float64), 0, 65535)
    return np.round(a / 257.0).astype(np.uint8)


def _scale_float(a: np.ndarray) -> np.ndarray:
    # Float images are either 0..1 (scaled to 0..255) or already 0..255 (clipped).
    a = np.nan_to_num(a.astype(np.float64))
    if a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.round(np.clip(a, 0, 255)).astype(np.uint8)


def _gray_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
