"""Square padding (data.pad_mode square, the old behaviour) against per-batch padding (batch).

Runs each measurement for both pad modes on the same machine, every one in a process of its
own, so that peak memory (ru_maxrss) is that measurement's alone, and prints one table:

    served   the exported SavedModel's serving_default on one JPEG (--image), loaded in process
             with --threads intra-op threads: first-call time, median latency, peak memory
    forward  the Keras model's own detection pass (one tf.function) on the padded tensor the
             signature builds from that JPEG: first-call time, median latency, peak memory;
             served / forward is what the rest of the serving graph costs
    server   the development server (mask-rcnn serve) at --concurrency levels on that JPEG
             (benchmarks/serving.py): p50 latency and images/s
    train    the trainer's train_step (a tf.function over the pipeline's element spec) at
             batch 2 on --train-sizes images (landscape and portrait mixed, through the real
             input pipeline): images/s and peak memory

Weights are random (timing does not depend on them; with random weights the RPN keeps all
proposals and the mask head runs on every one of the 100 detections, the worst case).

    python benchmarks/dynamic_shapes.py        # R-50-FPN, 800x1333 JPEG, everything
    python benchmarks/dynamic_shapes.py --only served forward --rounds 5
    # smoke test at toy sizes:
    python benchmarks/dynamic_shapes.py --config configs/shapes.yaml --image 100x166 \
        --train-sizes 60x80 80x60 --rounds 2 --requests 2 --concurrency 1 2 \
        --set data.min_size=100 data.max_size=166
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import bench_case, cpu_model, test_image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD_MODES = ("square", "batch")
MEASUREMENTS = ("served", "forward", "server", "train")
RESULT = "RESULT "


def _size(text):
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def _config(args, pad_mode):
    from mask_rcnn_tf.config import load_config

    return load_config(os.path.join(REPO, args.config), args.set + [f"data.pad_mode={pad_mode}"])


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(function, rounds):
    """(first-call seconds, median seconds of `rounds` further calls)."""
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _random_model(config, model_class=None):
    import keras

    from mask_rcnn_tf.modeling.factory import build_model

    keras.utils.set_random_seed(0)
    kwargs = {} if model_class is None else {"model_class": model_class}
    return build_model(config.model, image_size=64, **kwargs)


def child_export(args, pad_mode, workdir):
    from mask_rcnn_tf.export.saved_model import save_servable

    config = _config(args, pad_mode)
    names = [f"class_{i}" for i in range(1, config.model.num_classes)]
    save_servable(_random_model(config), os.path.join(workdir, pad_mode), class_names=names,
                  data_config=config.data)
    return {}


def child_served(args, pad_mode, workdir):
    import tensorflow as tf

    serve = tf.saved_model.load(os.path.join(workdir, pad_mode)).signatures["serving_default"]
    images = tf.constant([test_image(*args.image)])
    first, median = _timed(lambda: serve(images=images)["num_detections"].numpy(), args.rounds)
    return {"first_s": first, "median_s": median, "peak_mib": _peak_mib()}


def child_forward(args, pad_mode, workdir):
    import tensorflow as tf

    from mask_rcnn_tf.data.inputs import square_pad_size
    from mask_rcnn_tf.data.pipeline import pad_to_multiple, preprocess_image
    from mask_rcnn_tf.evaluation.evaluate import detection_function

    config = _config(args, pad_mode)
    d = config.data
    image = tf.io.decode_jpeg(test_image(*args.image), channels=3)
    resized, resized_size, _ = preprocess_image(image, min_size=d.min_size, max_size=d.max_size,
                                                pad_size=square_pad_size(d), mean=d.mean,
                                                std=d.std)
    padded = pad_to_multiple(resized[None], d.size_divisibility)
    sizes = tf.cast(resized_size, tf.float32)[None]
    detect = detection_function(_random_model(config))
    first, median = _timed(lambda: detect(padded, sizes)["num_detections"].numpy(), args.rounds)
    return {"first_s": first, "median_s": median, "peak_mib": _peak_mib(),
            "input": "x".join(str(v) for v in padded.shape[1:3])}


def _write_training_images(folder, sizes, count=8):
    """COCO files: `count` smooth images alternating over `sizes`, two boxes (with polygon
    masks) each."""
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        height, width = sizes[index % len(sizes)]
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([127 + 100 * np.sin(x / 23.0 + index), 127 + 100 * np.cos(y / 17.0),
                           127 + 100 * np.sin((x + y) / 31.0)], -1).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, "images", f"{index}.png"))
        images.append({"id": index + 1, "file_name": f"{index}.png", "height": height,
                       "width": width})
        for k, (top, left) in enumerate(((0.1, 0.1), (0.5, 0.4))):
            bx, by, bw, bh = left * width, top * height, 0.3 * width, 0.4 * height
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": k + 1,
                "bbox": [bx, by, bw, bh], "area": bw * bh, "iscrowd": 0,
                "segmentation": [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]]})
    path = os.path.join(folder, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, f)
    return path


def child_train(args, pad_mode, workdir):
    import tensorflow as tf

    from mask_rcnn_tf.data.coco import load_coco
    from mask_rcnn_tf.data.inputs import make_dataset
    from mask_rcnn_tf.training.train import compile_model

    config = _config(args, pad_mode)
    folder = os.path.join(workdir, "train_data")
    data = make_dataset(config.data, load_coco(os.path.join(folder, "annotations.json"),
                                               os.path.join(folder, "images")),
                        training=True, batch_size=2, seed=0)
    model = compile_model(config)
    step = tf.function(model.train_step, input_signature=[data.element_spec])
    batches = iter(data)
    shapes = set()

    def one_step():
        batch = next(batches)
        shapes.add("x".join(str(v) for v in batch["images"].shape[1:3]))
        float(step(batch)["loss"])

    first, median = _timed(one_step, args.rounds)
    return {"first_s": first, "median_s": median, "images_per_s": 2.0 / median,
            "peak_mib": _peak_mib(), "input": " ".join(sorted(shapes))}


CHILDREN = {"export": child_export, "served": child_served, "forward": child_forward,
            "train": child_train}


def _run_child(args, name, pad_mode, workdir):
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--pad-mode", pad_mode,
               "--workdir", workdir] + _forwarded(args)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
    if result.returncode or not lines:
        raise RuntimeError(f"{name} ({pad_mode}) failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def _forwarded(args):
    forwarded = ["--config", args.config, "--image", "x".join(map(str, args.image)),
                 "--rounds", str(args.rounds), "--threads", str(args.threads),
                 "--train-sizes", *("x".join(map(str, s)) for s in args.train_sizes)]
    return forwarded + (["--set", *args.set] if args.set else [])


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/maskrcnn_r50_fpn_coco.yaml")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--image", type=_size, default=(800, 1333), metavar="HxW")
    parser.add_argument("--train-sizes", type=_size, nargs="+", default=[(480, 640), (640, 480)],
                        metavar="HxW")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls after the first")
    parser.add_argument("--requests", type=int, default=8, help="per dev-server level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (served, "
                        "forward, train)")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--pad-mode", choices=PAD_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    if args.child:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        result = CHILDREN[args.child](args, args.pad_mode, args.workdir)
        print(RESULT + json.dumps(result), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        if "train" in args.only:
            _write_training_images(os.path.join(workdir, "train_data"), args.train_sizes)
        for pad_mode in PAD_MODES:
            if "served" in args.only:
                _run_child(args, "export", pad_mode, workdir)
            for name in ("served", "forward", "train"):
                if name in args.only:
                    rows.append((name, pad_mode, _run_child(args, name, pad_mode, workdir)))
            if "server" in args.only:
                for _, _, level, count, p50, _, rate in bench_case(
                        args.config, args.image, args.requests, args.concurrency, 600.0,
                        args.set + [f"data.pad_mode={pad_mode}"]):
                    rows.append((f"server c={level}", pad_mode,
                                 {"median_s": p50 / 1000.0, "images_per_s": rate,
                                  "requests": count}))
    import tensorflow as tf

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; TensorFlow {tf.__version__}; "
          f"{args.config} {' '.join(args.set)}; image {args.image[0]}x{args.image[1]}; "
          f"{args.threads} intra-op threads\n")
    print("| measurement | pad mode | input | first call s | median s | images/s | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, pad_mode, r in rows:
        cells = [(r.get("first_s"), ".3g"), (r.get("median_s"), ".3g"),
                 (r.get("images_per_s"), ".3g"), (r.get("peak_mib"), ".0f")]
        text = [r.get("input", "")] + ["" if v is None else format(v, f) for v, f in cells]
        print(f"| {name} | {pad_mode} | " + " | ".join(text) + " |")
    medians = {(name, mode): r["median_s"] for name, mode, r in rows}
    if ("served", "batch") in medians and ("served", "square") in medians:
        print(f"\nserved batch / served square: "
              f"{medians['served', 'batch'] / medians['served', 'square']:.2f} (target <= 0.85)")
    if ("served", "batch") in medians and ("forward", "batch") in medians:
        print(f"served batch / forward batch: "
              f"{medians['served', 'batch'] / medians['forward', 'batch']:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
