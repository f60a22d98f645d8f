"""Export a trained Mask R-CNN as a versioned SavedModel for TensorFlow Serving.

Layout written (see export/serving_module.py for the signatures):

    BASE/<version>/saved_model.pb
    BASE/<version>/variables/
    BASE/<version>/assets/labels.txt                         class names, class 1 first
    BASE/<version>/assets/keypoints.txt                      keypoint names (models with the
                                                             keypoint branch only)
    BASE/<version>/assets.extra/tf_serving_warmup_requests    (export/warmup.py)

Written with tf.saved_model.save rather than keras.export.ExportArchive (which calls
tf.saved_model.save underneath): the root object is ours, so it holds exactly what TF Serving
reads, i.e. the signatures under their TF Serving keys with named outputs, the model's
tf.Variables, and tracked tf.saved_model.Assets for labels.txt and keypoints.txt, which
ExportArchive has no public way to add; the signatures are plain functions of ServingModule
(decoding, the metadata signature), not Keras endpoints. Both save the bare tf.Variables rather
than the Keras objects, which is what makes the SavedModel load in tensorflow_model_server (see
ServingModule.saveable).
"""

import logging
import os
import tempfile

import keras
import tensorflow as tf

from mask_rcnn_tf.data.inputs import square_pad_size
from mask_rcnn_tf.export.serving_module import KEYPOINTS_FILE, LABELS_FILE, ServingModule
from mask_rcnn_tf.export.versions import publish_version, resolve_version
from mask_rcnn_tf.export.warmup import warmup_requests, write_warmup_file
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.weights.io import load_model_weights
from mask_rcnn_tf.weights.labels import label_schema_for

logger = logging.getLogger("mask_rcnn_tf.export")

# --precision -> the Keras dtype policy the network is built under. Variables stay float32 under
# mixed_bfloat16, and the model's outputs are float32 (its layers cast back), so the
# signatures' inputs and outputs are the same for both.
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def check_class_names(class_names, num_classes, source):
    """Checks the object class names of a model with num_classes classes (background included).

    Args:
        class_names: sequence of str, class 1 first.
        num_classes: int, model.num_classes.
        source: where the names come from, for error messages (the annotations file).

    Returns:
        list of str.

    Raises:
        ValueError: wrong count, or a name that is empty or spans lines (labels.txt holds one
            name per line).
    """
    names = [str(name) for name in class_names]
    if len(names) != num_classes - 1:
        raise ValueError(f"{source}: {len(names)} categories, but model.num_classes="
                         f"{num_classes} needs {num_classes - 1} class names (background "
                         "excluded)")
    _check_one_line(names, "class", source)
    return names


def check_keypoint_schema(keypoint_names, skeleton, num_keypoints, source):
    """Checks the keypoint names and skeleton of a model with num_keypoints keypoints.

    Args:
        keypoint_names: sequence of str, the categories' `keypoints`.
        skeleton: sequence of 1-based (a, b) keypoint pairs, the categories' `skeleton`.
        num_keypoints: int, model.keypoints.num_keypoints; 0 for a model without the branch,
            whose export ignores keypoints in the annotations.
        source: where the names come from, for error messages (the annotations file).

    Returns:
        (list of str, list of (int, int)); ([], []) when num_keypoints is 0.

    Raises:
        ValueError: wrong count; a name that is empty, spans lines (keypoints.txt holds one name
            per line) or repeats; a skeleton pair that is not two keypoint numbers 1..Kp.
    """
    if not num_keypoints:
        return [], []
    names = [str(name) for name in keypoint_names]
    if len(names) != num_keypoints:
        raise ValueError(f"{source}: {len(names)} keypoint names in the categories' "
                         f"'keypoints', but model.keypoints.num_keypoints={num_keypoints}")
    _check_one_line(names, "keypoint", source)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{source}: keypoint names {repeated} appear more than once")
    limbs = []
    for limb in skeleton:
        if len(limb) != 2 or not all(isinstance(k, int) and 1 <= k <= num_keypoints
                                     for k in limb):
            raise ValueError(f"{source}: skeleton pair {list(limb)} must be two keypoint "
                             f"numbers in 1..{num_keypoints}")
        limbs.append(tuple(limb))
    return names, limbs


def _check_one_line(names, kind, source):
    for name in names:
        if not name.strip() or "\n" in name or "\r" in name:
            raise ValueError(f"{source}: {kind} name {name!r} must be non-empty and on one line")


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def save_servable(model, path, *, class_names, data_config, full_masks=False,
                  mask_threshold=0.5, keypoint_names=(), skeleton=(), encoded_masks=None):
    """Writes the serving SavedModel of a built model to the new folder `path`.

    First folds the model's frozen BatchNorms into the convolutions before them, in place
    (MaskRCNN.fold_frozen_norms): the served graph runs conv + bias + ReLU as one fused kernel.
    The model computes the same detections afterwards, but its weights are the folded ones:
    export from a model built for the purpose (as export_saved_model does), not from one that
    goes on training.

    Args:
        model: a built MaskRCNN with its weights loaded.
        path: str, the SavedModel folder to create.
        class_names: K names, class 1 first (check_class_names).
        data_config: DataConfig, the resizing and normalization the model was trained with.
        full_masks: add the detection_masks_full output.
        mask_threshold: probability at which a pasted full-mask pixel is foreground.
        keypoint_names: Kp names for a model with the keypoint branch (check_keypoint_schema).
        skeleton: 1-based (a, b) keypoint pairs.
        encoded_masks: None, "png" or "rle": add the detection_masks_encoded_bytes output.
    """
    folded = model.fold_frozen_norms()
    logger.info("folded %d frozen BatchNorms into their convolutions", folded)
    with tempfile.TemporaryDirectory() as scratch:
        labels_path = os.path.join(scratch, LABELS_FILE)
        _write_lines(labels_path, class_names)
        keypoints_path = None
        if keypoint_names:
            keypoints_path = os.path.join(scratch, KEYPOINTS_FILE)
            _write_lines(keypoints_path, keypoint_names)
        d = data_config
        serving = ServingModule(model, class_names=class_names, min_size=d.min_size,
                                max_size=d.max_size, pad_size=square_pad_size(d), mean=d.mean,
                                std=d.std, full_masks=full_masks, mask_threshold=mask_threshold,
                                keypoint_names=keypoint_names, skeleton=skeleton,
                                channel_order=d.channel_order,
                                size_divisibility=d.size_divisibility,
                                encoded_masks=encoded_masks)
        root, signatures = serving.saveable(labels_path, keypoints_path)
        tf.saved_model.save(root, path, signatures=signatures)
    write_warmup_file(path, warmup_requests())


def export_saved_model(config, export_base, *, model_dir=None, weights=None, version=None,
                       overwrite=False, full_masks=False, encoded_masks=None,
                       precision="float32"):
    """Builds the model of `config`, loads its weights and writes export_base/<version>/.

    Class names, and for a model with the keypoint branch keypoint names and skeleton, come from
    the label schema beside the weights (weights/labels.py), else from the categories of
    data.train.annotations (else data.val), as for `mask-rcnn predict`. The version is
    checked before the model is built, so a refused export
    costs nothing; the folder appears atomically (export/versions.py).

    Args:
        config: Config.
        export_base: folder of the version folders (TF Serving's model base path).
        model_dir: training folder whose latest checkpoint is loaded, or
        weights: a .weights.h5 file (exactly one of the two).
        version: positive int; None: one past the highest version present.
        overwrite: replace an existing version folder.
        full_masks: add the uint8 detection_masks_full output.
        encoded_masks: None, "png" or "rle": add the detection_masks_encoded_bytes output
            (one PNG or COCO RLE string per detection, export/mask_encoding.py).
        precision: a key of PRECISION_POLICIES; "bfloat16" computes the network in bfloat16.

    Returns:
        str, the path of the version folder written.

    Raises:
        FileExistsError: the version exists and overwrite is False.
        ValueError, FileNotFoundError: bad version, class or keypoint names, config or weights.
    """
    version = resolve_version(export_base, version, overwrite)
    schema = label_schema_for(config, model_dir, weights)
    class_names = check_class_names([name for _, name in schema.categories],
                                    config.model.num_classes, schema.annotations_path)
    keypoint_names, skeleton = check_keypoint_schema(
        schema.keypoint_names, schema.skeleton, config.model.keypoints.num_keypoints,
        schema.annotations_path)
    model = build_model_for_precision(config, precision)
    loaded = load_model_weights(model, model_dir=model_dir, weights=weights)
    path = publish_version(
        export_base, version,
        lambda temp: save_servable(model, temp, class_names=class_names, data_config=config.data,
                                   full_masks=full_masks,
                                   mask_threshold=config.eval.mask_threshold,
                                   keypoint_names=keypoint_names, skeleton=skeleton,
                                   encoded_masks=encoded_masks),
        overwrite=overwrite)
    logger.info("exported weights %s to %s (%s)", loaded, path, precision)
    return path


def build_model_for_precision(config, precision):
    """build_model of config.model, built for config.data.pad_size, with every layer under the
    Keras dtype policy of `precision` (PRECISION_POLICIES); the global policy is restored after
    (layers keep the policy they were created with).

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISION_POLICIES:
        raise ValueError(f"export: precision must be one of {list(PRECISION_POLICIES)}, "
                         f"got {precision!r}")
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(PRECISION_POLICIES[precision])
    try:
        return build_model(config.model, image_size=config.data.pad_size)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
