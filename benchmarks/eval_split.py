"""Where `mask-rcnn evaluate` spends its time: the model vs the metric, per metric backend.

Generates --num-images shapes images (the demo's data generator, configs/shapes.yaml sizes),
runs the demo model over them once (input pipeline + model: "model_s"), and scores the same
detections with each backend: the shared conversion to COCO results (mask pasting and RLE
encoding, "results_s") and each backend's COCOeval evaluate + accumulate + summarize
("<backend>_metric_s"). Checks that both backends give the same AP to 1e-4.

    python benchmarks/eval_split.py --workdir /tmp/eval_split                  # 5,000 images
    python benchmarks/eval_split.py --workdir /tmp/eval_split --weights runs/shapes/model.weights.h5
    python benchmarks/eval_split.py --workdir /tmp/eval_small --num-images 50  # smoke test

Without --weights the model keeps its random initialization: an untrained model's many
low-score detections (score_threshold 0.05, up to detections_per_image each) are the metric's
worst case. Prints one JSON object.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "shapes.yaml")
BACKENDS = ("pycocotools", "faster_coco_eval")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--weights", help="a .weights.h5 of the shapes model (default: random)")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")

    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.data.coco import load_coco
    from mask_rcnn_tf.data.shapes import make_shapes
    from mask_rcnn_tf.evaluation.coco_eval import CocoEvaluator
    from mask_rcnn_tf.evaluation.evaluate import predict_dataset
    from mask_rcnn_tf.modeling.factory import build_model

    config = load_config(CONFIG, args.overrides)
    folder = os.path.join(args.workdir, f"shapes{args.num_images}")
    if not os.path.exists(os.path.join(folder, "annotations.json")):
        make_shapes(folder, num_images=args.num_images, seed=1,
                    image_size=config.data.max_size)
    dataset = load_coco(os.path.join(folder, "annotations.json"), os.path.join(folder, "images"))
    model = build_model(config.model, image_size=config.data.pad_size)
    if args.weights:
        model.load_weights(args.weights)
    category_ids = [c for c, _ in dataset.categories]
    evaluators = {name: CocoEvaluator(dataset.coco, category_ids, verbose=False, backend=name)
                  for name in BACKENDS}
    report = {"num_images": len(dataset.records), "weights": args.weights or "random",
              "results_s": 0.0}
    start = time.time()
    for outputs in predict_dataset(model, config.data, dataset, config.eval.batch_size,
                                   progress=True):
        tick = time.time()
        evaluators["pycocotools"].update(outputs)
        report["results_s"] += time.time() - tick
        evaluators["faster_coco_eval"].update(outputs)  # same conversion, not timed twice
    report["model_s"] = time.time() - start - 2 * report["results_s"]
    report["detections"] = len(evaluators["pycocotools"].results())
    metrics = {}
    for name, evaluator in evaluators.items():
        tick = time.time()
        metrics[name] = evaluator.evaluate()
        report[f"{name}_metric_s"] = time.time() - tick
    report["AP"] = {name: {t: m[t]["AP"] for t in m} for name, m in metrics.items()}
    report["same_numbers_to_1e-4"] = all(
        abs(metrics["faster_coco_eval"][t][k] - v) <= 1e-4
        for t, stats in metrics["pycocotools"].items() for k, v in stats.items())
    for name in BACKENDS:
        metric = report["results_s"] + report[f"{name}_metric_s"]
        report[f"{name}_metric_over_model"] = metric / report["model_s"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
