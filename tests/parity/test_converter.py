"""The torchvision weight converter: every tensor mapped, and clear errors for checkpoints that
do not fit (missing, unexpected, mis-shaped tensors; truncated, foreign or wrong-architecture
files), through the Python API and `mask-rcnn convert-torchvision`."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from mask_rcnn_tf import cli  # noqa: E402
from mask_rcnn_tf.convert import (  # noqa: E402
    COCO_CATEGORY_IDS,
    CheckpointError,
    assign_torchvision_weights,
    read_torch_checkpoint,
    torchvision_weights,
)
from mask_rcnn_tf.modeling.factory import build_model  # noqa: E402
from tests.parity.conftest import CONFIG  # noqa: E402
from tests.parity.reference import state_dict_numpy  # noqa: E402


@pytest.fixture(scope="module")
def state_dict(reference):
    return state_dict_numpy(reference)


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    """The reference saved as torchvision saves it (torch.save of the state dict)."""
    path = tmp_path_factory.mktemp("checkpoint") / "maskrcnn.pth"
    torch.save(reference.state_dict(), path)
    return path


def _fails(capsys, *argv):
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_every_tensor_is_mapped(ours, state_dict):
    pairs = torchvision_weights(ours, state_dict)
    # 360 entries = 307 weights + 53 BatchNorm step counters, which carry no weight.
    counters = [k for k in state_dict if k.endswith("num_batches_tracked")]
    assert len(pairs) == len(ours.weights) == len(state_dict) - len(counters) == 307
    by_variable = {id(v): value for v, value in pairs}
    fc1 = ours.box_head.fc1.kernel
    # torchvision flattens pooled features as (C, H, W), this model as (H, W, C).
    torch_fc6 = state_dict["roi_heads.box_head.fc6.weight"].reshape(1024, 256, 7, 7)
    np.testing.assert_array_equal(by_variable[id(fc1)][(2 * 7 + 3) * 256 + 5],
                                  torch_fc6[:, 5, 2, 3])


def test_legacy_names_module_prefix_and_frozen_bn_keys(ours, state_dict):
    """torchvision's published COCO checkpoint uses pre-0.13 names and FrozenBatchNorm2d
    (no step counters); DistributedDataParallel adds "module."."""
    legacy = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            key = key.replace(f"roi_heads.mask_head.{i}.0.",
                              f"roi_heads.mask_head.mask_fcn{i + 1}.")
            key = key.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.")
            key = key.replace(f"fpn.layer_blocks.{i}.0.", f"fpn.layer_blocks.{i}.")
        legacy["module." + key] = value
    assert "module.roi_heads.mask_head.mask_fcn4.weight" in legacy
    assert len(torchvision_weights(ours, legacy)) == 307


def test_missing_unexpected_and_misshaped_are_listed(ours, state_dict):
    broken = dict(state_dict)
    del broken["backbone.body.layer3.5.conv2.weight"]
    broken["roi_heads.keypoint_head.0.weight"] = np.zeros(3, np.float32)
    broken["rpn.head.cls_logits.bias"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointError) as info:
        torchvision_weights(ours, broken, source="x.pth")
    error = info.value
    assert error.missing == ["backbone.body.layer3.5.conv2.weight"]
    assert error.unexpected == ["roi_heads.keypoint_head.0.weight"]
    assert error.mismatched == ["rpn.head.cls_logits.bias (5,) -> rpn_head/objectness/bias (3,)"]
    message = str(error)
    assert message.startswith("x.pth: ") and "\n" not in message
    for part in ("1 missing: backbone.body.layer3.5.conv2.weight",
                 "1 unexpected: roi_heads.keypoint_head.0.weight",
                 "1 mis-shaped: rpn.head.cls_logits.bias"):
        assert part in message


@pytest.fixture(scope="module")
def model_81(config):
    from dataclasses import replace

    return build_model(replace(config.model, num_classes=81), image_size=64)


def test_wrong_number_of_classes(model_81, state_dict):
    with pytest.raises(CheckpointError) as info:
        torchvision_weights(model_81, state_dict)
    assert sorted(m.split()[0] for m in info.value.mismatched) == [
        "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.weight"]


def test_coco_contiguous_classes(model_81, state_dict, reference):
    """Keeping background + the 80 COCO ids: class k of ours is COCO_CATEGORY_IDS[k - 1]."""
    assign_torchvision_weights(model_81, state_dict, classes=(0,) + COCO_CATEGORY_IDS)
    pooled = np.random.default_rng(0).normal(size=(5, 256, 7, 7)).astype(np.float32)
    with torch.no_grad():
        heads = reference.roi_heads
        logits, deltas = heads.box_predictor(heads.box_head(torch.from_numpy(pooled)))
    ids = [0, *COCO_CATEGORY_IDS]
    their_deltas = deltas.numpy().reshape(5, 91, 4)[:, ids][..., [1, 0, 3, 2]]
    our_logits, our_deltas = model_81.box_head(pooled.transpose(0, 2, 3, 1)[None])
    np.testing.assert_allclose(our_logits[0], logits.numpy()[:, ids], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(our_deltas[0], their_deltas, rtol=1e-4, atol=1e-4)
    mask_bias = state_dict["roi_heads.mask_predictor.mask_fcn_logits.bias"]
    np.testing.assert_array_equal(model_81.mask_head.logits.bias.numpy(), mask_bias[ids])


def test_wrong_architecture_lists_what_is_missing(ours):
    """Faster R-CNN of the same backbone: every mask-head tensor is missing."""
    faster = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None)
    with pytest.raises(CheckpointError) as info:
        torchvision_weights(ours, state_dict_numpy(faster))
    assert len(info.value.missing) == 12
    assert all(k.startswith("roi_heads.mask_") for k in info.value.missing)
    assert not info.value.unexpected


def test_read_checkpoint_and_training_wrapper(checkpoint, state_dict, tmp_path):
    loaded = read_torch_checkpoint(checkpoint)
    assert loaded.keys() == state_dict.keys()
    np.testing.assert_array_equal(loaded["rpn.head.bbox_pred.weight"],
                                  state_dict["rpn.head.bbox_pred.weight"])
    wrapped = tmp_path / "train_checkpoint.pth"
    torch.save({"model": torch.load(checkpoint), "epoch": 3}, wrapped)
    assert read_torch_checkpoint(wrapped).keys() == state_dict.keys()


def test_cli_converts_and_the_weights_load(checkpoint, ours, config, tmp_path, capsys):
    output = tmp_path / "tv.weights.h5"
    assert cli.main(["convert-torchvision", "--checkpoint", str(checkpoint),
                     "--output", str(output), "--config", str(CONFIG)]) == 0
    assert '"tensors": 307' in capsys.readouterr().out
    model = build_model(config.model, image_size=64)
    model.load_weights(output)
    for mine, theirs in zip(model.weights, ours.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_cli_truncated_file(checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:100_000])
    output = tmp_path / "out.weights.h5"
    err = _fails(capsys, "convert-torchvision", "--checkpoint", str(truncated),
                 "--output", str(output), "--config", str(CONFIG))
    assert f"{truncated}: cannot read as a PyTorch checkpoint" in err
    assert not output.exists()


def test_cli_foreign_checkpoint(tmp_path, capsys):
    """A MobileNet classifier is neither a ResNet classifier nor a Mask R-CNN: nothing maps."""
    foreign = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), foreign)
    err = _fails(capsys, "convert-torchvision", "--checkpoint", str(foreign),
                 "--output", str(tmp_path / "out.weights.h5"), "--config", str(CONFIG))
    assert f"{foreign}: not a torchvision Mask R-CNN state dict?" in err
    assert "307 missing: backbone.body.conv1.weight" in err
    assert "unexpected: classifier.0.bias" in err


def test_cli_classifier_needs_a_backbone_file_name(tmp_path, capsys):
    """An ImageNet ResNet-18 classifier is converted to a backbone file, not a .weights.h5."""
    classifier = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), classifier)
    output = tmp_path / "out.weights.h5"
    err = _fails(capsys, "convert-torchvision", "--checkpoint", str(classifier),
                 "--output", str(output))
    assert f"{classifier} is an ImageNet classifier" in err
    assert "name it NAME.backbone.h5" in err
    assert not output.exists()


def test_cli_not_a_state_dict_and_bad_output(tmp_path, checkpoint, capsys):
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    err = _fails(capsys, "convert-torchvision", "--checkpoint", str(tensor_file),
                 "--output", str(tmp_path / "out.weights.h5"), "--config", str(CONFIG))
    assert f"{tensor_file}: holds Tensor, not a state dict of tensors" in err
    err = _fails(capsys, "convert-torchvision", "--checkpoint", str(checkpoint),
                 "--output", str(tmp_path / "out.h5"), "--config", str(CONFIG))
    assert "out.h5: the file name must end in .weights.h5" in err


def test_package_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import mask_rcnn_tf.convert; "
            "print('torch' in sys.modules and sys.modules['torch'] is not None)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_keypoint_rcnn_head(config, tmp_path):
    """torchvision's Keypoint R-CNN: its keypoint head maps onto ours (same heatmaps for the same
    pooled features); it has no mask branch, which allow_missing leaves as initialized."""
    from dataclasses import replace

    from mask_rcnn_tf.config import KeypointConfig
    from tests.parity.reference import max_relative_error, to_nhwc

    torch.manual_seed(0)
    theirs = torchvision.models.detection.keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2).eval()
    with torch.no_grad():
        for name, param in theirs.roi_heads.named_parameters():
            if name.endswith(".bias"):
                param.copy_(0.1 * torch.randn(param.shape))
    state_dict = state_dict_numpy(theirs)
    model = build_model(replace(config.model, num_classes=2,
                                keypoints=KeypointConfig(num_keypoints=17)), image_size=64)
    with pytest.raises(CheckpointError) as info:
        torchvision_weights(model, state_dict)
    assert len(info.value.missing) == 12 and not info.value.unexpected
    assert all(k.startswith("roi_heads.mask_") for k in info.value.missing)
    mask_kernel = model.mask_head.logits.kernel.numpy().copy()
    assign_torchvision_weights(model, state_dict, allow_missing=("mask_head",))
    np.testing.assert_array_equal(model.mask_head.logits.kernel.numpy(), mask_kernel)

    pooled = torch.from_numpy(np.random.default_rng(0).normal(
        size=(6, 256, 14, 14)).astype(np.float32))
    with torch.no_grad():
        heads = theirs.roi_heads
        heatmaps = heads.keypoint_predictor(heads.keypoint_head(pooled))
    ours = model.keypoint_head(to_nhwc(pooled)[None])[0]
    assert ours.shape == (6, 56, 56, 17)
    assert max_relative_error(ours, to_nhwc(heatmaps)) < 1e-4
