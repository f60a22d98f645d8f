"""Acceptance of issue 14: as a user runs it, `mask-rcnn convert-torchvision` then `mask-rcnn
predict --config configs/maskrcnn_r50_fpn_torchvision.yaml` gives torchvision's detections:
every one of torchvision's detections is matched one to one by one of ours of the same class
with box IoU > 0.99, on a non-square photo and on a square one.

The model is tests/parity/reference.py's torchvision Mask R-CNN with random (calibrated)
weights, saved with torch.save. The default test runs at min_size 160 / max_size 267, sizes
chosen so that padded sides are odd multiples of 32 (160 = 5 x 32: P6 has 3 cells, so
torchvision's anchor stride there is 160 // 3 = 53): the same code path as the full size,
which is the slow test (800 / 1333; the square photo resizes to 800 x 800, 13 P6 cells, stride
61). Classes: the 91-class model with one category per COCO id 1..90, so that predict's
category_id is torchvision's label.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("skimage")

from PIL import Image  # noqa: E402

from mask_rcnn_tf import cli  # noqa: E402
from tests.parity.conftest import CONFIG  # noqa: E402


def _torchvision_detections(model, image, min_size, max_size):
    """torchvision's own inference on uint8 RGB [h, w, 3]: boxes xyxy in original pixels."""
    model.transform.min_size, model.transform.max_size = (min_size,), max_size
    with torch.no_grad():
        out = model([torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)])[0]
    return out["boxes"].numpy(), out["labels"].numpy(), out["scores"].numpy()


def _iou(box, boxes):
    """xyxy [4] against [N, 4]."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _unmatched(theirs, ours):
    """torchvision's detections (by descending score) without a free match of ours: same
    class, box IoU > 0.99 (greedy, one to one)."""
    boxes, labels, _ = theirs
    our_boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in ours)])
    our_labels = np.array([r["category_id"] for r in ours])
    free = np.ones(len(ours), bool)
    missing = []
    for i in range(len(boxes)):
        ious = _iou(boxes[i], our_boxes) if len(ours) else np.zeros(0)
        candidates = np.flatnonzero(free & (our_labels == labels[i]) & (ious > 0.99))
        if not len(candidates):
            missing.append(i)
            continue
        free[candidates[np.argmax(ious[candidates])]] = False
    return missing


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """The reference saved as a .pth, converted through the CLI; an annotations file naming
    the categories; the CLI arguments predict needs."""
    root = tmp_path_factory.mktemp("cli_parity")
    checkpoint = root / "maskrcnn.pth"
    torch.save(reference.state_dict(), checkpoint)
    annotations = root / "categories.json"
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": i, "name": f"category {i}"} for i in range(1, 91)]}))
    weights = root / "converted.weights.h5"
    assert cli.main(["convert-torchvision", "--checkpoint", str(checkpoint),
                     "--output", str(weights), "--config", str(CONFIG)]) == 0
    return {"root": root, "weights": weights,
            "set": [f"data.train.annotations={annotations}"]}


def _check(reference, converted, photos, min_size, max_size):
    paths = []
    for name, photo in photos.items():
        paths.append(str(converted["root"] / f"{name}.png"))
        Image.fromarray(photo).save(paths[-1])
    out = converted["root"] / f"out{min_size}"
    assert cli.main(["predict", *paths, "--config", str(CONFIG),
                     "--weights", str(converted["weights"]), "--output-dir", str(out),
                     "--set", f"data.min_size={min_size}", f"data.max_size={max_size}",
                     *converted["set"]]) == 0
    results = json.loads((out / "detections.json").read_text())
    for index, (name, photo) in enumerate(photos.items()):
        theirs = _torchvision_detections(reference, photo, min_size, max_size)
        ours = [r for r in results if r["image_id"] == index]
        assert len(theirs[0]) >= 10, (name, len(theirs[0]))
        missing = _unmatched(theirs, ours)
        assert not missing, (name, f"{len(missing)} of {len(theirs[0])} unmatched", missing)
        print(f"{name} at {min_size}/{max_size}: all {len(theirs[0])} of torchvision's "
              f"detections matched")


def _photos():
    from skimage import data

    # coffee 400 x 600 (non-square); astronaut 512 x 512 (square).
    return {"coffee": data.coffee(), "astronaut": data.astronaut()}


def test_cli_predict_matches_torchvision(reference, converted):
    # coffee: 160 x 240 -> padded 160 x 256; astronaut: 160 x 160. P6 strides 53 and 64.
    _check(reference, converted, _photos(), 160, 267)


@pytest.mark.slow
def test_cli_predict_matches_torchvision_at_800(reference, converted):
    # coffee: 800 x 1200 -> padded 800 x 1216; astronaut: 800 x 800. P6 stride 61.
    _check(reference, converted, _photos(), 800, 1333)
