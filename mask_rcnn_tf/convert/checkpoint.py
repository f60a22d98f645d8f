"""`mask-rcnn convert-torchvision`: a torchvision .pth -> this project's weights and labels.

Two kinds of checkpoint are recognized by their keys:

- an ImageNet classifier (resnet50, resnet101, resnext101_32x8d, ...): a backbone file for
  `train.init_weights` (convert/torchvision_backbone.py; its `fc` is dropped);
- a Mask R-CNN / Keypoint R-CNN: a `.weights.h5` of the whole model (convert/torchvision.py),
  with COCO's label schema beside it (`X.labels.json`, weights/labels.py) when its outputs are
  COCO's: 91 classes (by category id), 81 (with --coco-contiguous) or person with 17 keypoints.
"""

import logging
import os

from mask_rcnn_tf.convert.torchvision import (
    COCO_CATEGORY_IDS,
    assign_torchvision_weights,
    read_torch_checkpoint,
)
from mask_rcnn_tf.convert.torchvision_backbone import (
    convert_classification_checkpoint,
    is_classification_checkpoint,
)

logger = logging.getLogger("mask_rcnn_tf.convert")

# Weights do not depend on the input size: a small dummy image builds them quickly.
_BUILD_SIZE = 128
_COCO_CLASSES_BY_ID = 91
_COCO_PERSON_KEYPOINTS = 17


def coco_schema_for(model_config, coco_contiguous):
    """COCO's LabelSchema when the model's outputs are COCO's, else None."""
    from mask_rcnn_tf.weights.labels import coco_label_schema

    num_classes = model_config.num_classes
    if model_config.keypoints.num_keypoints == _COCO_PERSON_KEYPOINTS and num_classes == 2:
        return coco_label_schema(keypoints=True)
    if coco_contiguous and num_classes == len(COCO_CATEGORY_IDS) + 1:
        return coco_label_schema(contiguous=True)
    if not coco_contiguous and num_classes == _COCO_CLASSES_BY_ID:
        return coco_label_schema(contiguous=False)
    return None


def convert_torchvision_checkpoint(config, checkpoint, output, coco_contiguous=False,
                                   allow_missing=()):
    """Converts a torchvision .pth file into a backbone file or a Keras .weights.h5 file.

    Args:
        config: Config whose model matches a detection checkpoint (for torchvision's COCO
            model: configs/maskrcnn_r50_fpn_torchvision.yaml); unused for a classifier, whose
            architecture is read from its tensors.
        checkpoint: str or os.PathLike, the .pth file (a state dict, or a dict holding one
            under "model").
        output: str or os.PathLike; a detection model's must end in ".weights.h5", a
            classifier's backbone file in ".h5". Written atomically.
        coco_contiguous: keep background and the 80 COCO categories of the 91 outputs
            (COCO_CATEGORY_IDS), as classes 0..80 (config model.num_classes 81), so the
            model numbers COCO as `evaluate` and `predict` do; otherwise class = COCO id.
        allow_missing: see torchvision_weights (a Keypoint R-CNN checkpoint: ("mask_head",)).

    Returns:
        dict with "output" (path), "kind" ("backbone" or "model"), "tensors" (number of
        weights written) and, for a model with COCO's outputs, "labels" (the schema file).

    Raises:
        ValueError: bad output name; CheckpointError (a ValueError) as in read_torch_checkpoint
            and torchvision_weights.
        FileNotFoundError: checkpoint missing, or the output folder does not exist.
    """
    from mask_rcnn_tf.io_utils import atomic_path
    from mask_rcnn_tf.modeling.factory import build_model
    from mask_rcnn_tf.weights.labels import schema_path_for_weights, write_label_schema

    output = os.fspath(output)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--output {output}: folder {folder} does not exist")
    state_dict = read_torch_checkpoint(checkpoint)
    if is_classification_checkpoint(state_dict):
        if not output.endswith(".h5") or output.endswith(".weights.h5"):
            raise ValueError(f"--output {output}: {checkpoint} is an ImageNet classifier, "
                             "converted to a backbone file: name it NAME.backbone.h5")
        return convert_classification_checkpoint(state_dict, os.fspath(checkpoint), output)
    if not output.endswith(".weights.h5"):
        raise ValueError(f"--output {output}: the file name must end in .weights.h5")
    model = build_model(config.model, image_size=_BUILD_SIZE)
    classes = (0,) + COCO_CATEGORY_IDS if coco_contiguous else None
    count = assign_torchvision_weights(model, state_dict, os.fspath(checkpoint), classes,
                                       allow_missing)
    with atomic_path(output) as temp_path:
        model.save_weights(temp_path)
    result = {"output": output, "kind": "model", "tensors": count}
    schema = coco_schema_for(config.model, coco_contiguous)
    if schema is None:
        logger.warning("%s: model.num_classes=%d is not COCO's: no label schema written; "
                       "predict and export will read class names from the annotations file",
                       output, config.model.num_classes)
    else:
        result["labels"] = schema_path_for_weights(output)
        write_label_schema(result["labels"], schema)
    return result
