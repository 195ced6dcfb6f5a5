"""Tiny generated image datasets, written as real files in tmp_path, shared by every test module.

Fixtures:
- imagefolder_root: <tmp>/imagefolder/train/{class_a,class_b,class_c}/img_XX.png (10 PNGs each, 40x30 RGB)
  and <tmp>/imagefolder/test/test_XX.png (6 PNGs, 2 per class). imagefolder_spec: its DataSpec.
- kaggle_root: <tmp>/kaggle/train.csv (id,label; 30 rows, labels cat/dog/fox interleaved), train/<id>.jpg,
  test/<id>.jpg (6 JPEGs), sample_submission.csv (id,label = cat), solution.csv (id,label,Usage: the test
  answers). kaggle_spec: its DataSpec (image_suffix ".jpg").
Images are easy to learn: class k has a bright bar in colour channel k, vertical for class 0, horizontal for
class 1, both for class 2, at a jittered position over noise; flips and crops keep the class visible.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kit.recipe import DataSpec

IMAGE_W, IMAGE_H = 40, 30  # non-square on purpose
IMAGEFOLDER_CLASSES = ("class_a", "class_b", "class_c")
KAGGLE_CLASSES = ("cat", "dog", "fox")
PER_CLASS = 10
TEST_PER_CLASS = 2


def class_image(k: int, rng: np.random.Generator, width: int = IMAGE_W, height: int = IMAGE_H) -> np.ndarray:
    """An HxWx3 uint8 image of class k (0, 1 or 2); see the module docstring."""
    img = rng.normal(60, 15, (height, width, 3))
    cx = width // 2 + int(rng.integers(-4, 5))
    cy = height // 2 + int(rng.integers(-3, 4))
    if k in (0, 2):
        img[:, cx - 3:cx + 3, k % 3] = 230
    if k in (1, 2):
        img[cy - 3:cy + 3, :, k % 3] = 230
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(path, array, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


@pytest.fixture
def imagefolder_root(tmp_path):
    root = tmp_path / "imagefolder"
    rng = np.random.default_rng(0)
    for k, name in enumerate(IMAGEFOLDER_CLASSES):
        for i in range(PER_CLASS):
            _save(root / "train" / name / f"img_{i:02d}.png", class_image(k, rng))
    for i in range(TEST_PER_CLASS * len(IMAGEFOLDER_CLASSES)):
        _save(root / "test" / f"test_{i:02d}.png", class_image(i % 3, rng))
    return root


@pytest.fixture
def imagefolder_spec(imagefolder_root) -> DataSpec:
    return DataSpec(source="imagefolder", root=str(imagefolder_root))


@pytest.fixture
def kaggle_root(tmp_path):
    root = tmp_path / "kaggle"
    rng = np.random.default_rng(1)
    n = PER_CLASS * len(KAGGLE_CLASSES)
    ids = [f"img_{i:03d}" for i in range(n)]
    labels = [KAGGLE_CLASSES[i % 3] for i in range(n)]
    for i, image_id in enumerate(ids):
        _save(root / "train" / f"{image_id}.jpg", class_image(i % 3, rng), quality=95)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "label": labels}).to_csv(root / "train.csv", index=False)
    test_ids = [f"t_{i:03d}" for i in range(TEST_PER_CLASS * len(KAGGLE_CLASSES))]
    for i, image_id in enumerate(test_ids):
        _save(root / "test" / f"{image_id}.jpg", class_image(i % 3, rng), quality=95)
    pd.DataFrame({"id": test_ids, "label": KAGGLE_CLASSES[0]}).to_csv(root / "sample_submission.csv", index=False)
    usage = ["Public" if i % 3 == 0 else "Private" for i in range(len(test_ids))]
    pd.DataFrame({"id": test_ids, "label": [KAGGLE_CLASSES[i % 3] for i in range(len(test_ids))],
                  "Usage": usage}).to_csv(root / "solution.csv", index=False)
    return root


@pytest.fixture
def kaggle_spec(kaggle_root) -> DataSpec:
    return DataSpec(source="kaggle", root=str(kaggle_root), image_suffix=".jpg")


def data_config(model, augment) -> dict:
    """The data config a run derives for `model` built with augment's input size and crop (kit.plan does it through
    pretrained_overlay and kit.models.backbone.model_data_config); for tests that build a bare timm model."""
    from kit.models.backbone import model_data_config
    cfg = model_data_config(model)
    if augment.input_size is not None:
        cfg["input_size"] = augment.input_size
    if augment.crop_pct is not None:
        cfg["crop_pct"] = augment.crop_pct
    return cfg
