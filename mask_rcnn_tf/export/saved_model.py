"""Export a trained Mask R-CNN as a versioned SavedModel for TensorFlow Serving.

Layout written (see export/serving_module.py for the signatures):

    BASE/<version>/saved_model.pb
    BASE/<version>/variables/
    BASE/<version>/assets/labels.txt                         class names, class 1 first
    BASE/<version>/assets.extra/tf_serving_warmup_requests    (export/warmup.py)

Written with tf.saved_model.save rather than keras.export.ExportArchive (which calls
tf.saved_model.save underneath): the root object is ours, so it holds exactly what TF Serving
reads, i.e. the signatures under their TF Serving keys with named outputs, the model's
tf.Variables, and a tracked tf.saved_model.Asset for labels.txt, which ExportArchive has no
public way to add; the signatures are plain functions of ServingModule (decoding, the metadata
signature), not Keras endpoints. Both save the bare tf.Variables rather than the Keras objects,
which is what makes the SavedModel load in tensorflow_model_server (see ServingModule.saveable).
"""

import logging
import os
import tempfile

import tensorflow as tf

from mask_rcnn_tf.data.inputs import load_categories
from mask_rcnn_tf.export.serving_module import LABELS_FILE, ServingModule
from mask_rcnn_tf.export.versions import publish_version, resolve_version
from mask_rcnn_tf.export.warmup import warmup_requests, write_warmup_file
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.training.checkpoints import load_model_weights

logger = logging.getLogger("mask_rcnn_tf.export")


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
    for name in names:
        if not name.strip() or "\n" in name or "\r" in name:
            raise ValueError(f"{source}: class name {name!r} must be non-empty and on one line")
    return names


def save_servable(model, path, *, class_names, data_config, full_masks=False,
                  mask_threshold=0.5):
    """Writes the serving SavedModel of a built model to the new folder `path`.

    Args:
        model: a built MaskRCNN with its weights loaded.
        path: str, the SavedModel folder to create.
        class_names: K names, class 1 first (check_class_names).
        data_config: DataConfig, the resizing and normalization the model was trained with.
        full_masks: add the detection_masks_full output.
        mask_threshold: probability at which a pasted full-mask pixel is foreground.
    """
    with tempfile.TemporaryDirectory() as scratch:
        labels_path = os.path.join(scratch, LABELS_FILE)
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("".join(name + "\n" for name in class_names))
        d = data_config
        serving = ServingModule(model, class_names=class_names, min_size=d.min_size,
                                max_size=d.max_size, pad_size=d.pad_size, mean=d.mean, std=d.std,
                                full_masks=full_masks, mask_threshold=mask_threshold)
        root, signatures = serving.saveable(labels_path)
        tf.saved_model.save(root, path, signatures=signatures)
    write_warmup_file(path, warmup_requests())


def export_saved_model(config, export_base, *, model_dir=None, weights=None, version=None,
                       overwrite=False, full_masks=False):
    """Builds the model of `config`, loads its weights and writes export_base/<version>/.

    Class names come from the categories of data.train.annotations (else data.val), as for
    `mask-rcnn predict`. The version is checked before the model is built, so a refused export
    costs nothing; the folder appears atomically (export/versions.py).

    Args:
        config: Config.
        export_base: folder of the version folders (TF Serving's model base path).
        model_dir: training folder whose latest checkpoint is loaded, or
        weights: a .weights.h5 file (exactly one of the two).
        version: positive int; None: one past the highest version present.
        overwrite: replace an existing version folder.
        full_masks: add the uint8 detection_masks_full output.

    Returns:
        str, the path of the version folder written.

    Raises:
        FileExistsError: the version exists and overwrite is False.
        ValueError, FileNotFoundError: bad version, class names, config or weights.
    """
    version = resolve_version(export_base, version, overwrite)
    class_names = check_class_names([name for _, name in load_categories(config.data)],
                                    config.model.num_classes,
                                    config.data.train.annotations or config.data.val.annotations)
    model = build_model(config.model, image_size=config.data.pad_size)
    loaded = load_model_weights(model, model_dir=model_dir, weights=weights)
    path = publish_version(
        export_base, version,
        lambda temp: save_servable(model, temp, class_names=class_names, data_config=config.data,
                                   full_masks=full_masks,
                                   mask_threshold=config.eval.mask_threshold),
        overwrite=overwrite)
    logger.info("exported weights %s to %s", loaded, path)
    return path
