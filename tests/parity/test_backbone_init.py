"""ImageNet backbones through `train.init_weights`: torchvision classifiers converted by
`mask-rcnn convert-torchvision`, and Keras Applications ResNet50 weights files, give the
backbone's C2..C5 their own network computes (acceptance: 1e-4 relative).

The weights are random with BatchNorm statistics and affine terms redrawn, so that no norm is
the identity and a mis-mapped mean, variance or (Keras) conv bias shows.
"""

import numpy as np
import pytest

from mask_rcnn_tf import cli
from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.data.pipeline import preprocess_image
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.weights.init import apply_init_weights, read_init_weights
from tests.parity.conftest import CONFIG
from tests.parity.reference import max_relative_error, normalized_image, to_nhwc, to_torch

COCO_CONFIG = CONFIG.with_name("maskrcnn_r50_fpn_coco.yaml")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def small_photo(photo):
    """uint8 RGB [160, 224, 3], a crop of the coffee photograph (keeps the deep nets fast)."""
    return np.ascontiguousarray(photo[100:260, 150:374])


def _backbone_of(config_overrides, init_path):
    config = load_config(COCO_CONFIG, [f"train.init_weights={init_path}", *config_overrides])
    # Only the backbone is compared: build its weights alone (the heads stay unbuilt, empty).
    model = build_model(config.model)
    model.backbone.build((1, None, None, 3))
    report = apply_init_weights(model, read_init_weights(init_path, config), config)
    return model, config, report


def _randomize_torch_norms(model, seed):
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                assert module.weight.shape == (channels,)
    return model.eval()


@pytest.mark.parametrize("name,depth", [("resnet50", 50), ("resnet101", 101)])
def test_torchvision_classifier_converted_and_loaded_matches_layer1_to_layer4(
        name, depth, small_photo, tmp_path, capsys):
    import torch
    import torchvision

    torch.manual_seed(depth)
    reference = _randomize_torch_norms(getattr(torchvision.models, name)(weights=None), depth)
    checkpoint = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), checkpoint)
    output = tmp_path / f"{name}.backbone.h5"
    assert cli.main(["convert-torchvision", "--checkpoint", str(checkpoint),
                     "--output", str(output)]) == 0
    assert f'"depth": {depth}' in capsys.readouterr().out

    model, _, report = _backbone_of([f"model.backbone.depth={depth}"], output)
    assert report["backbone"]["loaded"] == len(model.backbone.weights)
    assert report["backbone"]["fresh"] == []
    assert report["fpn"]["loaded"] == 0  # a backbone file sets the backbone only

    image = normalized_image(small_photo, (192, 256))
    with torch.no_grad():
        x = to_torch(image)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = {}
        for stage in range(1, 5):
            x = getattr(reference, f"layer{stage}")(x)
            expected[f"c{stage + 1}"] = to_nhwc(x)
    ours = model.backbone(image, training=False)
    for level, value in expected.items():
        error = max_relative_error(ours[level], value)
        assert error < TOLERANCE, (level, error)


def _keras_resnet50_random(seed):
    import keras

    keras.utils.set_random_seed(seed)
    network = keras.applications.ResNet50(weights=None, include_top=False)
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.2, channels), rng.uniform(0.5, 2.0, channels)])
        elif isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    return network


@pytest.mark.parametrize("file_kind", ["legacy_h5", "weights_h5"])
def test_keras_applications_resnet50_loaded_matches_its_stage_outputs(
        file_kind, small_photo, tmp_path):
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    network = _keras_resnet50_random(seed=7)
    if file_kind == "legacy_h5":
        # The layout of resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 (Keras 2's
        # save_weights), the file keras.applications downloads.
        path = tmp_path / "resnet50_notop.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, network)
    else:
        path = tmp_path / "resnet50.weights.h5"
        network.save_weights(path)

    caffe = ["model.backbone.stride_in_1x1=true", "data.channel_order=bgr",
             "data.mean=[103.939,116.779,123.68]", "data.std=[1,1,1]"]
    model, config, report = _backbone_of(caffe, path)
    assert report["backbone"]["loaded"] == len(model.backbone.weights)

    d = config.data
    ours_input, _, _ = preprocess_image(small_photo, min_size=160, max_size=224, pad_size=256,
                                        mean=d.mean, std=d.std, channel_order=d.channel_order)
    ours = model.backbone(ours_input[None, :160, :224], training=False)
    theirs_input = keras.applications.resnet.preprocess_input(
        small_photo.astype(np.float32)[None])
    outputs = [network.get_layer(name).output for name in
               ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")]
    expected = keras.Model(network.input, outputs)(theirs_input)
    for level, value in zip(("c2", "c3", "c4", "c5"), expected):
        error = max_relative_error(ours[level], np.asarray(value))
        assert error < TOLERANCE, (level, error)
