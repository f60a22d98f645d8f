"""Keypoints through the export: detection_keypoints in both image signatures against the
in-process Keras model (converted here with NumPy), keypoint names and skeleton in the metadata
signature and assets, a mask-only export left as it was, and keypoint names that do not fit the
model refused."""

import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from mask_rcnn_tf.data.figures import KEYPOINT_NAMES, SKELETON
from mask_rcnn_tf.export.saved_model import check_keypoint_schema, export_saved_model
from mask_rcnn_tf.ops.keypoint_ops import keypoints_to_original_frame
from tests.export.helpers import (NUM_DETECTIONS, SIZE, coco_frame, encode_png, noise_images,
                                  random_model, resize_scale, run_model, tiny_config)

IMAGE_SIZES = [(64, 64), (40, 60), (90, 50), (33, 77)]
MASK_OUTPUTS = {"num_detections", "detection_boxes", "detection_classes", "detection_scores",
                "detection_masks", "image_sizes"}


@pytest.fixture(scope="module")
def setup(tiny_keypoint_export):
    """The session's tiny keypoint export (tests/conftest.py), read only."""
    return tiny_keypoint_export


def _reference(model, images):
    """In-process detections of one batch; keypoints also in original pixels (NumPy here)."""
    outputs = run_model(model, images, SIZE)
    outputs["keypoints"] = np.stack([
        coco_frame(outputs["detection_keypoints"][b], resize_scale(*image.shape[:2]))
        for b, image in enumerate(images)])
    return outputs


def _assert_same_keypoints(served, reference, served_b, reference_b):
    num = int(reference["num_detections"][reference_b])
    assert int(served["num_detections"][served_b]) == num
    np.testing.assert_array_equal(served["detection_classes"][served_b, :num],
                                  reference["detection_classes"][reference_b, :num])
    keypoints = served["detection_keypoints"][served_b]
    assert keypoints.dtype == np.float32
    assert keypoints.shape == (NUM_DETECTIONS, len(KEYPOINT_NAMES), 3)
    np.testing.assert_allclose(keypoints[:num], reference["keypoints"][reference_b, :num],
                               atol=1e-3)
    assert not keypoints[num:].any()  # padding rows


def test_both_signatures_give_keypoints_in_original_pixels(setup):
    images = noise_images(IMAGE_SIZES)
    signatures = setup["loaded"].signatures
    encoded = signatures["serving_default"](images=tf.constant([encode_png(i) for i in images]))
    encoded = {key: value.numpy() for key, value in encoded.items()}
    reference = _reference(setup["model"], images)
    counts = reference["num_detections"]
    # Worth comparing: detections in most images, and padding rows in some.
    assert (counts > 0).sum() >= 3 and (counts < NUM_DETECTIONS).any(), counts
    for b in range(len(images)):
        _assert_same_keypoints(encoded, reference, b, b)
        # serving_tensor takes one size per request: one image each, against a batch of one.
        pixels = signatures["serving_tensor"](images=tf.constant(images[b][None]))
        _assert_same_keypoints({key: value.numpy() for key, value in pixels.items()},
                               _reference(setup["model"], [images[b]]), 0, 0)


def test_metadata_and_assets_give_names_and_skeleton(setup):
    metadata = setup["loaded"].signatures["metadata"](unused=tf.constant([0, 0]))
    assert set(metadata) == {"class_names", "keypoint_names", "skeleton"}
    assert metadata["keypoint_names"].numpy().tolist() == \
        [[name.encode() for name in KEYPOINT_NAMES]] * 2
    skeleton = metadata["skeleton"].numpy()
    assert skeleton.dtype == np.int32
    assert skeleton.tolist() == [[list(limb) for limb in SKELETON]] * 2
    assert metadata["class_names"].numpy().tolist() == [[b"figure"]] * 2
    assets = setup["export_dir"] + "/assets/"
    with open(assets + "keypoints.txt", encoding="utf-8") as f:
        assert f.read() == "".join(name + "\n" for name in KEYPOINT_NAMES)
    with open(assets + "labels.txt", encoding="utf-8") as f:
        assert f.read() == "figure\n"


def _signature_outputs(export_dir):
    with open(f"{export_dir}/saved_model.pb", "rb") as f:
        graph = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0]
    return {key: set(graph.signature_def[key].outputs)
            for key in ("serving_default", "serving_tensor", "metadata")}


def test_keypoint_outputs_in_the_signature_defs(setup):
    outputs = _signature_outputs(setup["export_dir"])
    assert outputs["serving_default"] == outputs["serving_tensor"] == \
        MASK_OUTPUTS | {"detection_keypoints"}
    assert outputs["metadata"] == {"class_names", "keypoint_names", "skeleton"}


def test_mask_only_model_exports_as_before(setup, tmp_path):
    # The annotations name keypoints, but a model without the branch ignores them.
    config, _ = tiny_config(setup["annotations"], ["model.keypoints.num_keypoints=0"])
    weights = tmp_path / "mask_only.weights.h5"
    random_model(config, weights)
    path = export_saved_model(config, tmp_path / "models", weights=str(weights))
    outputs = _signature_outputs(path)
    assert outputs["serving_default"] == outputs["serving_tensor"] == MASK_OUTPUTS
    assert outputs["metadata"] == {"class_names"}
    assert sorted(p.name for p in (tmp_path / "models" / "1" / "assets").iterdir()) == \
        ["labels.txt"]


def test_keypoint_count_that_does_not_fit_the_annotations_refused(setup, tmp_path):
    config, _ = tiny_config(setup["annotations"], [
        "model.keypoints.num_keypoints=5", "data.keypoint_flip_map=[0, 1, 2, 3, 4]",
        "eval.keypoint_oks_sigmas=[0.1, 0.1, 0.1, 0.1, 0.1]"])
    with pytest.raises(ValueError, match=re.escape(
            f"{setup['annotations']}: 7 keypoint names in the categories' 'keypoints', but "
            "model.keypoints.num_keypoints=5")):
        export_saved_model(config, tmp_path / "models", weights=str(setup["weights"]))
    assert not (tmp_path / "models").exists()


def test_keypoint_schema_checks():
    assert check_keypoint_schema(("a", "b"), ((1, 2),), 2, "k.json") == (["a", "b"], [(1, 2)])
    assert check_keypoint_schema(("a", "b"), ((1, 2),), 0, "k.json") == ([], [])
    for names, skeleton, message in [
        (("a", "a"), (), "k.json: keypoint names ['a'] appear more than once"),
        (("a", "b\nc"), (), "k.json: keypoint name 'b\\nc' must be non-empty and on one line"),
        (("a", "b"), ((1, 3),), "k.json: skeleton pair [1, 3] must be two keypoint numbers in "
                                "1..2"),
        (("a", "b"), ((0, 1),), "k.json: skeleton pair [0, 1] must be two keypoint numbers in "
                                "1..2"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            check_keypoint_schema(names, skeleton, 2, "k.json")


def test_frame_conversion_by_hand_on_arrays_and_tensors():
    keypoints = np.array([[[[10.0, 20.0, -3.5], [0.5, 0.5, 1.0]]]], np.float32)  # [1, 1, 2, 3]
    want = [[[[4.5, 9.5, -3.5], [-0.25, -0.25, 1.0]]]]  # scale 2: x / 2 - 0.5
    scales = np.array([2.0], np.float32)
    np.testing.assert_allclose(keypoints_to_original_frame(keypoints, scales), want)
    np.testing.assert_allclose(
        keypoints_to_original_frame(tf.constant(keypoints), tf.constant(scales)).numpy(), want)
