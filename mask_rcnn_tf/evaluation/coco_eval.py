"""COCO metrics (pycocotools, or faster-coco-eval) for batches of Mask R-CNN detections.

Two backends give the same numbers (tests/evaluation/test_eval_backends.py checks them to 1e-4):
pycocotools' COCOeval, whose per-image matching is Python, and faster-coco-eval's
COCOeval_faster, the same algorithm in C++ (`pip install faster-coco-eval`, the `fast-eval`
extra); `eval.backend` picks one, benchmarks/eval_split.py measures both.

Shape letters: B images in a batch, N detection slots per image (the first `num_detections` are
real), M the side of the predicted box-crop masks, h and w the original image size.
"""

import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from mask_rcnn_tf.config import EVAL_BACKENDS as BACKENDS
from mask_rcnn_tf.ops.keypoint_ops import keypoints_to_original_frame
from mask_rcnn_tf.ops.mask_ops import paste_masks_numpy

_DETECTION_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

_KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

# Names of COCOeval.stats, in pycocotools' order, for each iouType this module can score.
STAT_NAMES = {"bbox": _DETECTION_STATS, "segm": _DETECTION_STATS, "keypoints": _KEYPOINT_STATS}

# The result field each iouType scores. Each iouType gets results holding only its own field,
# because COCO.loadRes takes the detection area from the box whenever a box is present, which
# would put masks into the wrong small/medium/large range.
_RESULT_FIELD = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}

_REQUIRED_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes",
                     "num_detections", "image_ids", "scales", "original_sizes")


def _checked_outputs(outputs):
    """Returns the batch arrays as NumPy after checking keys and shapes (ValueError names them)."""
    missing = [key for key in _REQUIRED_OUTPUTS if key not in outputs]
    if missing:
        raise ValueError(f"detection outputs lack {missing}; they hold {sorted(outputs)}")
    arrays = {key: np.asarray(outputs[key]) for key in _REQUIRED_OUTPUTS}
    for key in ("detection_masks", "detection_keypoints"):
        if key in outputs:
            arrays[key] = np.asarray(outputs[key])
    boxes = arrays["detection_boxes"]
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ValueError(f"detection_boxes must be [B, N, 4], got shape {boxes.shape}")
    batch, slots = boxes.shape[:2]
    expected = {"detection_scores": (batch, slots), "detection_classes": (batch, slots),
                "num_detections": (batch,), "image_ids": (batch,), "scales": (batch,),
                "original_sizes": (batch, 2)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(f"{key} must have shape {shape} to match detection_boxes "
                             f"{boxes.shape}, got {arrays[key].shape}")
    masks = arrays.get("detection_masks")
    if masks is not None and (masks.ndim != 4 or masks.shape[:2] != (batch, slots)):
        raise ValueError(f"detection_masks must be [B, N, M, M] with B, N = {batch}, {slots}, "
                         f"got shape {masks.shape}")
    num = arrays["num_detections"]
    if np.any(num < 0) or np.any(num > slots):
        raise ValueError(f"num_detections must lie in [0, {slots}], got {num.tolist()}")
    if np.any(arrays["scales"] <= 0):
        raise ValueError(f"scales must be positive, got {arrays['scales'].tolist()}")
    if np.any(arrays["original_sizes"] <= 0):
        raise ValueError(f"original_sizes must be positive, "
                         f"got {arrays['original_sizes'].tolist()}")
    return arrays


def _encode_rle(binary_mask):
    """COCO compressed RLE of a bool [h, w] mask, with `counts` as str so it can go to JSON."""
    rle = mask_utils.encode(np.asfortranarray(binary_mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def detections_to_coco(outputs, category_ids, mask_threshold=0.5):
    """Converts one batch of model outputs to COCO result dicts in original-image pixels.

    Args:
        outputs: dict of NumPy arrays (tensors are converted):
            "detection_boxes": float32 [B, N, 4], [y1, x1, y2, x2], pixels of the resized
                input image.
            "detection_scores": float32 [B, N].
            "detection_classes": int32 [B, N], contiguous class 1..K (padding rows may hold
                0 or -1).
            "detection_masks" (optional; without it results have no "segmentation"):
                float32 [B, N, M, M], mask probabilities inside each box.
            "detection_keypoints" (optional): float32 [B, N, Kp, 3] (x, y, score), x and y
                continuous pixels of the resized input image.
            "num_detections": int32 [B], how many leading rows of each image are real.
            "image_ids": int64 [B], COCO image ids.
            "scales": float32 [B], resized size = original size * scale.
            "original_sizes": int32 [B, 2], (h, w) of the original images.
        category_ids: sequence of K COCO category ids; class c maps to category_ids[c - 1].
        mask_threshold: float, a pasted mask pixel is foreground when its probability is >= this.

    Returns:
        list of dicts with "image_id", "category_id", "score", "bbox" ([x, y, w, h], original
        pixels, clipped to the image), when masks are given "segmentation" (RLE, str counts,
        of the mask pasted into the original image with the unclipped box), and when keypoints
        are given "keypoints" ([x, y, score] per keypoint in COCO's pixel-index frame: the
        continuous coordinate minus 0.5).
    """
    arrays = _checked_outputs(outputs)
    category_ids = [int(c) for c in category_ids]
    masks = arrays.get("detection_masks")
    keypoints = arrays.get("detection_keypoints")
    if keypoints is not None:
        keypoints = keypoints_to_original_frame(keypoints.astype(np.float64),
                                                arrays["scales"].astype(np.float64))
    results = []
    for b in range(arrays["detection_boxes"].shape[0]):
        count = int(arrays["num_detections"][b])
        height, width = (int(v) for v in arrays["original_sizes"][b])
        image_id = int(arrays["image_ids"][b])
        boxes = arrays["detection_boxes"][b, :count].astype(np.float64) / float(arrays["scales"][b])
        clipped = np.clip(boxes, 0.0, [height, width, height, width])
        for i in range(count):
            cls = int(arrays["detection_classes"][b, i])
            if not 1 <= cls <= len(category_ids):
                raise ValueError(f"detection_classes[{b}, {i}] = {cls} (image_id {image_id}) "
                                 f"is outside 1..{len(category_ids)}, the category_ids range")
            y1, x1, y2, x2 = (float(v) for v in clipped[i])
            result = {"image_id": image_id, "category_id": category_ids[cls - 1],
                      "bbox": [x1, y1, x2 - x1, y2 - y1],
                      "score": float(arrays["detection_scores"][b, i])}
            if masks is not None:
                pasted = paste_masks_numpy(masks[b, i], boxes[i].astype(np.float32),
                                           (height, width))
                result["segmentation"] = _encode_rle(pasted >= mask_threshold)
            if keypoints is not None:
                result["keypoints"] = [round(float(v), 3) for v in keypoints[b, i].reshape(-1)]
            results.append(result)
    return results


class CocoEvaluator:
    """Accumulates detections batch by batch, then scores them with pycocotools COCOeval.

    Only the images passed to `update` are scored: their ground truth counts even when they got
    no detections; the other images of `coco_gt` are left out.

    Args:
        coco_gt: pycocotools.coco.COCO, the ground truth.
        category_ids: sequence of K COCO category ids; class c maps to category_ids[c - 1].
        iou_types: iterable of keys of STAT_NAMES ("bbox", "segm", "keypoints").
        mask_threshold: float, passed to `detections_to_coco`.
        verbose: bool, print pycocotools' progress and summary tables.
        keypoint_sigmas: per-keypoint OKS sigmas for "keypoints" (pycocotools' default is
            COCO's 17 person keypoints; any other dataset must give its own).
        backend: "pycocotools" or "faster_coco_eval" (see the module docstring).
    """

    def __init__(self, coco_gt, category_ids, iou_types=("bbox", "segm"), mask_threshold=0.5,
                 verbose=True, keypoint_sigmas=None, backend="pycocotools"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self._backend = backend
        self._fast_gt = None  # faster-coco-eval's index of the ground truth, built when needed
        self._iou_types = tuple(iou_types)
        unknown = [t for t in self._iou_types if t not in STAT_NAMES]
        if unknown or not self._iou_types:
            raise ValueError(f"iou_types {list(self._iou_types)} must be a non-empty subset of "
                             f"{sorted(STAT_NAMES)}")
        self._category_ids = [int(c) for c in category_ids]
        unknown = sorted(set(self._category_ids) - set(coco_gt.getCatIds()))
        if unknown:
            raise ValueError(f"category_ids {unknown} are not categories of the ground truth")
        self._coco_gt = coco_gt
        self._gt_image_ids = set(coco_gt.getImgIds())
        self._mask_threshold = mask_threshold
        self._verbose = verbose
        self._keypoint_sigmas = keypoint_sigmas
        if "keypoints" in self._iou_types and keypoint_sigmas is None:
            raise ValueError("iou_types include 'keypoints': give keypoint_sigmas (OKS sigmas, "
                             "one per keypoint)")
        self._image_ids = set()
        self._results = []

    def update(self, outputs):
        """Adds one batch of model outputs (see `detections_to_coco` for the keys and shapes)."""
        for iou_type, key in (("segm", "detection_masks"), ("keypoints", "detection_keypoints")):
            if iou_type in self._iou_types and key not in outputs:
                raise ValueError(f"iou_types include '{iou_type}' but the outputs have no {key}")
        image_ids = [int(i) for i in np.asarray(outputs.get("image_ids", [])).reshape(-1)]
        unknown = sorted(set(image_ids) - self._gt_image_ids)
        if unknown:
            raise ValueError(f"image_ids {unknown} are not in the ground truth")
        repeated = sorted(set(image_ids) & self._image_ids)
        if repeated or len(set(image_ids)) != len(image_ids):
            # Scoring an image twice would count its detections twice against one ground truth.
            raise ValueError(f"image_ids {repeated or image_ids} were passed more than once")
        results = detections_to_coco(outputs, self._category_ids, self._mask_threshold)
        self._image_ids.update(image_ids)
        self._results.extend(results)

    def results(self):
        """Returns the COCO result dicts accumulated so far (see `detections_to_coco`)."""
        return list(self._results)

    def evaluate(self):
        """Runs COCOeval for every iou type over the images seen.

        Returns:
            {iou_type: {stat name: float}} with the names of STAT_NAMES[iou_type] in order; all
            zeros when there are no detections; -1 where the ground truth has nothing to score
            (pycocotools' convention, e.g. APs without small objects).
        """
        return {iou_type: self._evaluate_iou_type(iou_type) for iou_type in self._iou_types}

    def _evaluate_iou_type(self, iou_type):
        names = STAT_NAMES[iou_type]
        field = _RESULT_FIELD[iou_type]
        detections = [{"image_id": r["image_id"], "category_id": r["category_id"],
                       "score": r["score"], field: r[field]} for r in self._results]
        # COCO.loadRes fails on an empty list.
        if not detections:
            return dict.fromkeys(names, 0.0)
        if self._verbose:
            quiet = contextlib.nullcontext()
        else:
            quiet = contextlib.redirect_stdout(io.StringIO())
        with quiet:
            print(f"IoU metric: {iou_type}")
            coco_eval = self._cocoeval(detections, iou_type)
            coco_eval.params.imgIds = sorted(self._image_ids)
            if iou_type == "keypoints":
                coco_eval.params.kpt_oks_sigmas = np.asarray(self._keypoint_sigmas, np.float64)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return {name: float(value) for name, value in zip(names, coco_eval.stats)}

    def _cocoeval(self, detections, iou_type):
        """The backend's COCOeval over the ground truth and `detections` (COCO result dicts)."""
        if self._backend == "pycocotools":
            return COCOeval(self._coco_gt, self._coco_gt.loadRes(detections), iouType=iou_type)
        try:
            from faster_coco_eval import COCO as FastCOCO, COCOeval_faster
        except ImportError:
            raise ValueError("eval.backend faster_coco_eval needs `pip install faster-coco-eval` "
                             "(the fast-eval extra)") from None
        if self._fast_gt is None:
            self._fast_gt = FastCOCO(self._coco_gt.dataset)
        return COCOeval_faster(self._fast_gt, self._fast_gt.loadRes(detections),
                               iouType=iou_type, print_function=print)
