"""How far a trained model's detections move in its bfloat16 export against its float32 one.

served_path.py compares the two exports of an R-50-FPN with random weights, whose scores are
near-ties everywhere, so a tiny numeric change reorders them; this compares the exports of a
trained model (e.g. the demo's) on held-out images instead. Both exports need
`--encoded-masks rle`:

    mask-rcnn export --config configs/shapes.yaml --model-dir runs/demo --export-base /tmp/f32 \
        --version 1 --encoded-masks rle
    mask-rcnn export ... --export-base /tmp/bf16 --version 1 --encoded-masks rle --precision bfloat16
    python benchmarks/bfloat16_detections.py /tmp/f32/1 /tmp/bf16/1 data/shapes/val/images/0000[01]*.png

For each float32 detection at or above --min-score: is there a bfloat16 detection of the same
class with box IoU > 0.9, and with mask IoU > 0.8 as well? Prints one JSON object.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from served_path import box_iou  # noqa: E402


def _matches(full, low, i, size, decode_mask):
    mask = decode_mask(full["detection_masks_encoded_bytes"][0, i], size)
    box = False
    for j in range(int(low["num_detections"][0])):
        if (low["detection_classes"][0, j] != full["detection_classes"][0, i]
                or box_iou(low["detection_boxes"][0, j], full["detection_boxes"][0, i]) <= 0.9):
            continue
        box = True
        other = decode_mask(low["detection_masks_encoded_bytes"][0, j], size)
        union = np.logical_or(mask, other).sum()
        if union and np.logical_and(mask, other).sum() / union > 0.8:
            return True, True
    return box, False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float32_export")
    parser.add_argument("bfloat16_export")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--min-score", type=float, nargs="+", default=[0.0, 0.5])
    args = parser.parse_args()

    import tensorflow as tf

    from mask_rcnn_tf.serving.images import decode_mask

    signatures = [tf.saved_model.load(path).signatures["serving_default"]
                  for path in (args.float32_export, args.bfloat16_export)]
    counts = {score: [0, 0, 0] for score in args.min_score}
    for path in args.images:
        with open(path, "rb") as f:
            data = tf.constant([f.read()])
        full, low = ({k: v.numpy() for k, v in s(images=data).items()} for s in signatures)
        size = tuple(full["image_sizes"][0])
        for i in range(int(full["num_detections"][0])):
            box, mask = _matches(full, low, i, size, decode_mask)
            for score, count in counts.items():
                if full["detection_scores"][0, i] >= score:
                    count[0] += 1
                    count[1] += box
                    count[2] += mask
    print(json.dumps({f"score>={score}": {
        "detections": n, "box_iou_0.9_rate": b / max(n, 1), "box_and_mask_iou_rate": m / max(n, 1)}
        for score, (n, b, m) in counts.items()}, indent=1))


if __name__ == "__main__":
    main()
