"""Fixtures of the parity tests: one natural image, torchvision's model and ours with its weights.

Built once per session (about 15 s): torchvision's R-50-FPN Mask R-CNN made non-trivial on the
image (tests/parity/reference.py), and configs/maskrcnn_r50_fpn_torchvision.yaml with the
converted weights. The image is skimage's "coffee" photograph (400 x 600), normalized and
zero-padded to 448 x 640: both sides are multiples of 64, see `padded_image`.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

# torch's CUDA wheels bring Triton, whose LLVM crashes the process (segmentation fault) when it
# is loaded after TensorFlow, as happens when these tests run after others; importing
# torchvision loads it. These tests never compile kernels: make `import triton` fail instead,
# which torch treats as "Triton not installed".
sys.modules.setdefault("triton", None)

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "maskrcnn_r50_fpn_torchvision.yaml"


@pytest.fixture(scope="session")
def photo():
    """uint8 RGB [400, 600, 3], skimage.data.coffee()."""
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="session")
def padded_image(photo):
    """float32 [1, 448, 640, 3], normalized, zero padding right and bottom.

    torchvision's AnchorGenerator puts a level's anchors at stride (padded size) // (cells),
    which is 61, not 64, on P6 when a padded side is an odd multiple of 32 (800 -> 13 cells);
    this model uses the level stride. Multiples of 64 keep that quirk out of the comparison.
    """
    from tests.parity.reference import normalized_image

    return normalized_image(photo, (448, 640))


@pytest.fixture(scope="session")
def reference(padded_image):
    from tests.parity.reference import build_reference

    return build_reference(padded_image)


@pytest.fixture(scope="session")
def config():
    from mask_rcnn_tf.config import load_config

    return load_config(CONFIG)


@pytest.fixture(scope="session")
def ours(reference, config):
    """Our MaskRCNN with the reference's weights converted."""
    from mask_rcnn_tf.convert import assign_torchvision_weights
    from mask_rcnn_tf.modeling.factory import build_model
    from tests.parity.reference import state_dict_numpy

    model = build_model(config.model, image_size=64)
    assign_torchvision_weights(model, state_dict_numpy(reference))
    return model


@pytest.fixture(scope="session")
def reference_features(reference, padded_image):
    """torchvision's FPN output: dict "0".."3", "pool" of torch [1, 256, Hl, Wl]."""
    import torch

    from tests.parity.reference import to_torch

    with torch.no_grad():
        return reference.backbone(to_torch(padded_image))


@pytest.fixture(scope="session")
def our_features(ours, padded_image):
    """Our FPN output: dict "p2".."p6" of NumPy [1, Hl, Wl, 256]."""
    features = ours.fpn(ours.backbone(padded_image))
    return {name: np.asarray(value) for name, value in features.items()}
