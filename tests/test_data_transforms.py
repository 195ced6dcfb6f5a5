import albumentations as A
import cv2
import numpy as np
import pytest
import timm
import torch

from kit.data import create_eval_transform, create_train_transform, eval_resize
from kit.models.backbone import build_model, model_data_config, pretrained_overlay
from kit.recipe import AugmentSpec, ModelSpec

CFG = {"input_size": 32, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), "crop_pct": 0.875,
       "interpolation": "bicubic"}
IMAGE = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # non-square


def test_the_data_config_is_the_models_own_with_the_recipes_overlay():
    """One resolver (kit.models.backbone.model_data_config): the model carries timm's pretrained config, the
    offline weights' preprocessing and augment.input_size / crop_pct (pretrained_overlay), and the transforms read
    it from the model."""
    spec = ModelSpec(backbone="test_resnet", weights="none")
    model, _ = build_model(spec, 2, pretrained_overlay(spec, AugmentSpec()), load_weights=False)
    assert model_data_config(model) == {"input_size": 160, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                        "crop_pct": 0.95, "interpolation": "bilinear"}
    overlay = pretrained_overlay(spec, AugmentSpec(input_size=48, crop_pct=0.8))
    model, _ = build_model(spec, 2, overlay, load_weights=False)
    cfg = model_data_config(model)
    assert cfg["input_size"] == 48 and cfg["crop_pct"] == 0.8
    lite = ModelSpec(backbone="efficientnet_lite0", weights="offline")  # the offline weights' own normalisation
    model, _ = build_model(lite, 2, pretrained_overlay(lite, AugmentSpec()), load_weights=False)
    assert model_data_config(model)["input_size"] == 224


@pytest.mark.parametrize("train", [
    [{"RandomResizedCrop": {"scale": [0.6, 1.0]}}, {"HorizontalFlip": {"p": 0.5}}],  # the default
    [{"HorizontalFlip": {}}],  # no size step: resized to S x S afterwards
    [{"RandomResizedCrop": {"size": [20, 20]}}],  # another size: resized afterwards
    [{"RandomResizedCrop": {"p": 0.5}}],  # not always applied: resized afterwards
    [{"Resize": {"height": 32, "width": 32}}, {"SmallestMaxSize": {"max_size": 50}}],  # size changed again
    [],
])
def test_train_transform_outputs_square_tensor(train):
    tf = create_train_transform(AugmentSpec(train=train), CFG)
    for _ in range(3):
        x = tf(image=IMAGE)["image"]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == (3, 32, 32)


def test_train_transform_keeps_list_order_and_adds_resize_only_when_needed():
    crop_and_flip = [{"RandomResizedCrop": {"scale": [0.6, 1.0]}}, {"HorizontalFlip": {"p": 0.5}}]
    tf = create_train_transform(AugmentSpec(train=crop_and_flip), CFG)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["RandomResizedCrop", "HorizontalFlip", "Normalize", "ToTensorV2"]
    assert tuple(tf.transforms[0].size) == (32, 32)
    tf = create_train_transform(AugmentSpec(train=[{"HorizontalFlip": {}}]), CFG)
    assert [type(t).__name__ for t in tf.transforms][:3] == ["HorizontalFlip", "SmallestMaxSize", "CenterCrop"]
    assert tf.transforms[1].interpolation == cv2.INTER_CUBIC


@pytest.mark.filterwarnings("ignore:This augmenter is very slow")
def test_all_augmentation_families_build():
    train = [
        {"RandomResizedCrop": {"scale": [0.5, 1.0]}},
        {"HorizontalFlip": {"p": 1.0}},
        {"Rotate": {"limit": 20, "p": 1.0}},
        {"SafeRotate": {"limit": 15, "p": 1.0}},
        {"Affine": {"shear": [-10, 10], "p": 1.0}},
        {"ElasticTransform": {"alpha": 20, "sigma": 5, "p": 1.0}},
        {"GridDistortion": {"p": 1.0}},
        {"PiecewiseAffine": {"scale": [0.02, 0.04], "p": 1.0}},
        {"ColorJitter": {"p": 1.0}},
        {"HueSaturationValue": {"p": 1.0}},
        {"RGBShift": {"p": 1.0}},
        {"FancyPCA": {"alpha": 0.1, "p": 1.0}},
    ]
    tf = create_train_transform(AugmentSpec(train=train), CFG)
    x = tf(image=IMAGE)["image"]
    assert tuple(x.shape) == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_unknown_transform_and_bad_params():
    with pytest.raises(ValueError, match=r"augment.train\[0\]: 'HorizontalFlipp'"):
        create_train_transform(AugmentSpec.model_construct(train=[{"HorizontalFlipp": {}}]), CFG)
    with pytest.raises(ValueError, match=r"augment.train\[1\].Rotate: invalid parameters.*'nope'"):
        create_train_transform(AugmentSpec.model_construct(train=[{"HorizontalFlip": {}}, {"Rotate": {"nope": 1}}]),
                               CFG)


def test_eval_resize():
    assert eval_resize(CFG) == 37  # round(32 / 0.875) = round(36.57)
    assert eval_resize(CFG, resize=40) == 40
    assert eval_resize({**CFG, "crop_pct": 1.0}) == 32


def test_eval_transform_shapes_and_interpolation():
    tf = create_eval_transform(CFG)
    assert tuple(tf(image=IMAGE)["image"].shape) == (3, 32, 32)
    assert isinstance(tf.transforms[0], A.SmallestMaxSize) and tf.transforms[0].interpolation == cv2.INTER_CUBIC
    assert tf.transforms[0].max_size == 37 or tf.transforms[0].max_size == [37]
    tf = create_eval_transform({**CFG, "interpolation": "bilinear"}, resize=40, crop=40)
    assert tf.transforms[0].interpolation == cv2.INTER_LINEAR
    assert tuple(tf(image=IMAGE)["image"].shape) == (3, 40, 40)  # the R x R square used by TTA crops


@pytest.mark.parametrize("make", [lambda: create_eval_transform(CFG),
                                  lambda: create_train_transform(AugmentSpec(), CFG)])
def test_normalisation_uses_cfg_mean_std(make):
    x = make()(image=np.full((30, 40, 3), 100, dtype=np.uint8))["image"]
    expected = (100 / 255 - np.array(CFG["mean"])) / np.array(CFG["std"])
    assert np.allclose(x.mean(dim=(1, 2)).numpy(), expected, atol=1e-4)
    assert np.allclose(x.std(dim=(1, 2)).numpy(), 0, atol=1e-4)
