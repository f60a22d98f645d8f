"""Weight converters from other frameworks' checkpoints (importable without those frameworks)."""

from mask_rcnn_tf.convert.checkpoint import convert_torchvision_checkpoint
from mask_rcnn_tf.convert.torchvision import (
    COCO_CATEGORY_IDS,
    CheckpointError,
    assign_torchvision_weights,
    read_torch_checkpoint,
    torchvision_weights,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "CheckpointError",
    "assign_torchvision_weights",
    "convert_torchvision_checkpoint",
    "read_torch_checkpoint",
    "torchvision_weights",
]
