import numpy as np
import pytest
from PIL import Image

from kit.data import ImageReadError, load_item, read_image


def _check(a, shape):
    assert a.dtype == np.uint8 and a.shape == shape and a.flags["C_CONTIGUOUS"]


def test_rgb_png_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    _check(out, (30, 40, 3))
    assert (out == a).all()


def test_grey_and_binary(tmp_path):
    g = np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))
    Image.fromarray(g).save(tmp_path / "l.png")
    out = read_image(tmp_path / "l.png")
    _check(out, (30, 40, 3))
    assert (out == g[:, :, None]).all()
    Image.fromarray(g > 100).convert("1").save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    out = read_image(tmp_path / "b.png")
    assert set(np.unique(out)) == {0, 255} and (out[:, :, 0] == np.where(g > 100, 255, 0)).all()


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.zeros((30, 40), dtype=np.uint16)
    a[:, 10:] = 257 * 100
    a[:, 20:] = 30000
    a[:, 30:] = 65535
    Image.fromarray(a).save(tmp_path / "x16.png")
    assert Image.open(tmp_path / "x16.png").mode.startswith("I")
    out = read_image(tmp_path / "x16.png")
    _check(out, (30, 40, 3))
    assert out[0, [0, 10, 20, 30], 0].tolist() == [0, 100, round(30000 / 257), 255]


def test_32bit_int_tiff(tmp_path):
    a = np.full((30, 40), 257 * 50, dtype=np.int32)
    Image.fromarray(a, mode="I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert (read_image(tmp_path / "i.tif") == 50).all()


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((30, 40, 4), dtype=np.uint8)  # transparent black everywhere ...
    a[:10] = (255, 0, 0, 255)  # ... an opaque red band ...
    a[10:20] = (255, 0, 0, 128)  # ... and a half-transparent red band
    Image.fromarray(a, "RGBA").save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    _check(out, (30, 40, 3))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[15, 0, 0] == 255 and abs(int(out[15, 0, 1]) - 127) <= 1
    assert out[25, 0].tolist() == [255, 255, 255]


def test_la_is_composited_on_white(tmp_path):
    a = np.zeros((30, 40, 2), dtype=np.uint8)
    a[:15] = (40, 255)
    Image.fromarray(a, "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    out = read_image(tmp_path / "la.png")
    assert out[0, 0].tolist() == [40, 40, 40] and out[20, 0].tolist() == [255, 255, 255]


def test_palette_with_and_without_transparency(tmp_path):
    idx = np.zeros((30, 40), dtype=np.uint8)
    idx[:, 20:] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    _check(out, (30, 40, 3))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 30].tolist() == [0, 0, 255]
    img.save(tmp_path / "pt.png", transparency=0)  # index 0 (black) is transparent
    loaded = Image.open(tmp_path / "pt.png")
    assert loaded.mode == "P" and "transparency" in loaded.info
    out = read_image(tmp_path / "pt.png")
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 30].tolist() == [0, 0, 255]


def test_cmyk_jpeg(tmp_path):
    c = np.zeros((30, 40, 4), dtype=np.uint8)
    c[..., 0] = 255  # pure cyan
    Image.fromarray(c, "CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = read_image(tmp_path / "c.jpg")
    _check(out, (30, 40, 3))
    r, g, b = out[15, 20].astype(int)
    assert r < 20 and g > 235 and b > 235


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((30, 40, 3), dtype=np.uint8)  # stored 40 wide, 30 high
    a[:5, :5] = (255, 0, 0)  # red marker top-left as stored
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation 6: display rotated 90 degrees clockwise
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "rot.jpg")
    _check(out, (40, 30, 3))
    assert out[1, -2, 0] > 200 and out[1, 1, 0] < 50  # the marker is now top-right


def test_corrupt_truncated_and_missing_files_raise_with_path(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    for name in ("cut.jpg", "junk.png", "nowhere.png"):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
    assert issubclass(ImageReadError, OSError)


def test_load_item(tmp_path):
    a = np.full((3, 4, 3), 7, dtype=np.uint8)
    assert load_item(a) is a
    Image.fromarray(a).save(tmp_path / "a.png")
    assert (load_item(str(tmp_path / "a.png")) == a).all()


# ---------------------------------------------------------------- size limits and formats (verify_image too)

def _png_header(path, width, height):
    """A valid PNG header for a width x height greyscale image with a few rows of data: a decompression bomb
    is small on disk; decoding it in full would need width x height x 3 bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("pillow_limit", ["default", "disabled"])
def test_decompression_bomb_is_refused_at_once(tmp_path, monkeypatch, pillow_limit):
    import time
    from kit.data.images import verify_image
    if pillow_limit == "disabled":  # what many notebooks do; kit's own limit must still hold
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    _png_header(tmp_path / "bomb.png", 30000, 30000)
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    for fn in (read_image, verify_image):
        t0 = time.perf_counter()
        with pytest.raises(ImageReadError, match=r"bomb\.png.*(30000x30000|DecompressionBomb)"):
            fn(tmp_path / "bomb.png")
        assert time.perf_counter() - t0 < 1.0  # from the header: no 2.7 GB allocation, no decode


@pytest.mark.parametrize("name, size, kwargs", [
    ("one.png", (1, 1), {}), ("wide.png", (6000, 40), {}), ("anim.gif", (40, 30), {}),
    ("x.tif", (40, 30), {"compression": "tiff_lzw"}), ("x.webp", (40, 30), {"quality": 90}),
    ("UPPER.JPG", (40, 30), {"quality": 90}), ("UPPER.PNG", (40, 30), {}),
])
def test_sizes_and_formats_decode_and_verify(tmp_path, name, size, kwargs):
    from kit.data.images import verify_image
    a = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / name, **kwargs)
    out = read_image(tmp_path / name)
    _check(out, (size[1], size[0], 3))
    verify_image(tmp_path / name)  # no error


def test_verify_image_agrees_with_read_image(tmp_path):
    from kit.data.images import verify_image
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "full.jpg", quality=95)
    Image.fromarray(a).save(tmp_path / "full.png")
    c = np.zeros((30, 40, 4), dtype=np.uint8)
    Image.fromarray(c, "CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("full.jpg", "full.png"):
        data = (tmp_path / name).read_bytes()
        for frac in (0.3, 0.9, 0.99):  # a truncated file has a valid header: only a full decode finds it
            (tmp_path / f"cut_{frac}_{name}").write_bytes(data[: int(len(data) * frac)])
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for p in sorted(tmp_path.iterdir()):
        try:
            read_image(p)
            readable = True
        except ImageReadError:
            readable = False
        if readable:
            verify_image(p)
        else:
            with pytest.raises(ImageReadError, match=p.name):
                verify_image(p)
        assert readable == (not p.name.startswith(("cut", "junk", "empty"))), p.name
