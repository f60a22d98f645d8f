"""Where the network's time goes on CPU: milliseconds per stage of one Mask R-CNN inference.

    python benchmarks/profile_stages.py [--precision float32 bfloat16] [--norms folded unfolded]
                                        [--threads 2] [--runs 5] [--warmup 2] [--tiny]
                                        [--json out.json]

R-50-FPN (configs/maskrcnn_r50_fpn_torchvision.yaml) with random weights (Keras initializers),
one 800 x 1333 image (skimage's coffee photograph, as benchmarks/vs_torchvision.py) zero-padded
to 800 x 1344, score threshold 0 so 100 detections reach the mask head. Each stage is its own
tf.function fed the previous stage's real outputs, timed alone (median of --runs after --warmup):
backbone, FPN, RPN head, proposals (top-k + NMS), box RoIAlign, box head, detection NMS (per
class), mask RoIAlign, mask head; "whole model" is model(...) in one tf.function, whose time
differs from the stages' sum by what one graph overlaps or fuses across stage boundaries.
--norms: "folded" folds the backbone's frozen BatchNorms into its convs as the export does
(MaskRCNN.fold_frozen_norms), "unfolded" keeps them as the training graph runs them.
Each (precision, norms) column runs in a child process (the Keras dtype policy is set once),
alternating columns over --rounds children, with --threads intra-op threads and one inter-op
thread.
--tiny: configs/shapes.yaml narrowed to 64 px inputs, to smoke-test the script.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from served_path import IMAGE_SIZE, median_ms, timing_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PADDED_SIZE = (800, 1344)
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
STAGES = ("backbone", "fpn", "rpn_head", "proposals", "box_roi_align", "box_head",
          "detection_nms", "mask_roi_align", "mask_head", "whole_model")


def _image(tiny):
    if tiny:
        return np.random.default_rng(0).integers(0, 255, (48, 64, 3)).astype(np.uint8), (64, 64)
    from PIL import Image
    from skimage import data

    crop = data.coffee()[20:380]
    return np.asarray(Image.fromarray(crop).resize(IMAGE_SIZE[::-1], Image.BILINEAR)), PADDED_SIZE


def _worker(args):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.modeling.factory import build_model

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    if args.tiny:
        config = load_config(ROOT / "configs" / "shapes.yaml", [
            "data.min_size=64", "data.max_size=64", "model.backbone.base_width=8",
            "model.fpn.num_channels=16", "model.roi_heads.box_fc_dim=16",
            "model.roi_heads.mask_conv_dim=8", "model.roi_heads.score_threshold=0.0"])
    else:
        config = load_config(ROOT / "configs" / "maskrcnn_r50_fpn_torchvision.yaml",
                             ["model.roi_heads.score_threshold=0.0"])
    keras.utils.set_random_seed(0)
    model = build_model(config.model, image_size=64)
    if args.norms == "folded":
        model.fold_frozen_norms()
    photo, padded = _image(args.tiny)
    images = np.zeros((1, *padded, 3), np.float32)
    images[0, :photo.shape[0], :photo.shape[1]] = (photo.astype(np.float32) - MEAN) / STD
    images = tf.constant(images)
    image_sizes = tf.constant([photo.shape[:2]], tf.float32)

    # Each stage as model.forward / model._detect run them (modeling/mask_rcnn.py).
    stage_fns = {
        "backbone": tf.function(lambda x: model.backbone(x, training=False)),
        "fpn": tf.function(lambda c: model.fpn(c, training=False)),
        "rpn_head": tf.function(lambda f: model.rpn_head(f)),
        "proposals": tf.function(lambda logits, deltas, anchors: model.proposal_generator(
            logits, deltas, anchors, image_sizes, training=False)),
        "box_roi_align": tf.function(lambda f, rois: model.box_roi_align(f, rois)),
        "box_head": tf.function(lambda x: model.box_head(x, training=False)),
        "detection_nms": tf.function(lambda logits, deltas, rois, valid: model.detection_generator(
            logits, deltas, rois, valid, image_sizes)),
        "mask_roi_align": tf.function(lambda f, boxes: model.mask_roi_align(f, boxes)),
        "mask_head": tf.function(lambda x: model.mask_head(x, training=False)),
        "whole_model": tf.function(lambda x: model({"images": x, "image_sizes": image_sizes},
                                                  training=False)),
    }
    backbone = stage_fns["backbone"](images)
    features = stage_fns["fpn"](backbone)
    rpn_features = [features[name] for name in model.rpn_level_names]
    rpn_logits, rpn_deltas = stage_fns["rpn_head"](rpn_features)
    anchors = model._anchors(images, rpn_features)
    proposals, _, valid = stage_fns["proposals"](rpn_logits, rpn_deltas, anchors)
    box_features = stage_fns["box_roi_align"](features, proposals)
    class_logits, box_deltas = stage_fns["box_head"](box_features)
    detections = stage_fns["detection_nms"](class_logits, box_deltas, proposals, valid)
    mask_features = stage_fns["mask_roi_align"](features, detections["detection_boxes"])
    inputs = {
        "backbone": (images,), "fpn": (backbone,), "rpn_head": (rpn_features,),
        "proposals": (rpn_logits, rpn_deltas, anchors), "box_roi_align": (features, proposals),
        "box_head": (box_features,),
        "detection_nms": (class_logits, box_deltas, proposals, valid),
        "mask_roi_align": (features, detections["detection_boxes"]),
        "mask_head": (mask_features,), "whole_model": (images,),
    }

    def timed(stage):
        fn, args_ = stage_fns[stage], inputs[stage]
        # .numpy() of one output: the call's work is done when the host has the result.
        return median_ms(lambda: tf.nest.flatten(fn(*args_))[0].numpy(), args.runs,
                          args.warmup)

    return {"ms": {stage: timed(stage) for stage in STAGES},
            "detections": int(detections["num_detections"][0])}


def _child(args, precision, norms):
    command = [sys.executable, __file__, "--worker", "--precision", precision, "--norms", norms,
               "--threads", str(args.threads), "--runs", str(args.runs),
               "--warmup", str(args.warmup)] + (["--tiny"] if args.tiny else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        sys.exit(f"profile ({precision}, {norms}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = timing_parser(__doc__)
    parser.add_argument("--precision", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16"])
    parser.add_argument("--norms", nargs="+", default=["folded", "unfolded"],
                        choices=["folded", "unfolded"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.precision, args.norms = args.precision[0], args.norms[0]
        print(json.dumps(_worker(args)))
        return
    columns = [(precision, norms) for precision in args.precision for norms in args.norms]
    rounds = {f"{p} {n}": [] for p, n in columns}
    for _ in range(args.rounds):
        for precision, norms in columns:  # alternating, so load drifts hit all alike
            rounds[f"{precision} {norms}"].append(_child(args, precision, norms))
    table = {column: {stage: statistics.median(r["ms"][stage] for r in results)
                      for stage in STAGES} for column, results in rounds.items()}
    print("| stage | " + " | ".join(f"{p} ms" for p in table) + " |")
    print("|---|" + "---:|" * len(table))
    for stage in STAGES:
        print(f"| {stage} | " + " | ".join(f"{table[p][stage]:.1f}" for p in table) + " |")
    print("| sum of stages | " + " | ".join(
        f"{sum(table[p][s] for s in STAGES[:-1]):.1f}" for p in table) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table_ms": table, "runs": rounds}, f, indent=2)


if __name__ == "__main__":
    main()
