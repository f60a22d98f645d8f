"""What a Mask R-CNN server answers, as Python objects: one Detection per detected instance.

Decodes the arrays of a Predict response (export/serving_module.py's outputs) with NumPy only.
"""

import dataclasses

import numpy as np

from mask_rcnn_tf.mask_paste import paste_mask
from mask_rcnn_tf.serving.images import decode_mask


# eq=False: fields hold arrays, which have no single truth value for ==.
@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
    """One detected instance.

    Attributes:
        class_id: int, 1..K.
        class_name: str, or None when the model carries no class names.
        score: float in [0, 1].
        box: float32 [4], [y1, x1, y2, x2], pixels of the original image.
        mask: bool [h, w], the instance's pixels in the original image.
        keypoints: float32 [Kp, 3] (x, y, score), x and y pixels of the original image in
            COCO's pixel-index frame (pixel i's centre at i), score the heatmap's maximum logit
            (its level carries no meaning across models); None for a model without keypoints.
        keypoint_names: tuple of Kp str, the names of the rows of `keypoints`; None when the
            model has no keypoints or gives no names.
    """

    class_id: int
    class_name: str | None
    score: float
    box: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray | None = None
    keypoint_names: tuple | None = None

    def named_keypoints(self):
        """{keypoint name: (x, y, score)} in the model's keypoint order (floats, frame as in
        `keypoints`), e.g. `detection.named_keypoints()["head"]`; None without keypoints or
        names."""
        if self.keypoints is None or self.keypoint_names is None:
            return None
        return {name: tuple(float(v) for v in point)
                for name, point in zip(self.keypoint_names, self.keypoints)}


def detections_from_outputs(outputs, index, class_names, keypoint_names, min_score,
                            mask_threshold):
    """The Detections of image `index` of a Predict response.

    Args:
        outputs: dict of the response's arrays (export/serving_module.py: num_detections [B],
            detection_boxes [B, N, 4], detection_classes [B, N], detection_scores [B, N],
            detection_masks [B, N, M, M], detection_masks_full [B, N, Hc, Wc] or
            detection_masks_encoded_bytes [B, N] (used first when present), image_sizes
            [B, 2], optionally detection_keypoints [B, N, Kp, 3]).
        index: the image's row.
        class_names: K names, class 1 first, or None.
        keypoint_names: Kp names, or None.
        min_score: detections scoring below it are left out.
        mask_threshold: probability at which a pasted mask pixel is foreground.

    Returns:
        list of Detection, in the model's order (score descending).
    """
    height, width = (int(v) for v in outputs["image_sizes"][index])
    full_masks = outputs.get("detection_masks_full")
    encoded_masks = outputs.get("detection_masks_encoded_bytes")
    keypoints = outputs.get("detection_keypoints")
    if keypoint_names is not None:
        keypoint_names = tuple(keypoint_names)
    detections = []
    for slot in range(int(outputs["num_detections"][index])):
        score = float(outputs["detection_scores"][index, slot])
        if score < min_score:
            continue
        class_id = int(outputs["detection_classes"][index, slot])
        box = np.asarray(outputs["detection_boxes"][index, slot], np.float32)
        if encoded_masks is not None:
            mask = decode_mask(encoded_masks[index, slot], (height, width))
        elif full_masks is not None:
            mask = full_masks[index, slot, :height, :width] > 0
        else:
            mask = paste_mask(outputs["detection_masks"][index, slot], box,
                              (height, width)) >= mask_threshold
        name = None
        if class_names is not None and 1 <= class_id <= len(class_names):
            name = class_names[class_id - 1]
        points = None
        if keypoints is not None:
            points = np.asarray(keypoints[index, slot], np.float32)
        detections.append(Detection(class_id, name, score, box, mask, points,
                                    keypoint_names if points is not None else None))
    return detections
