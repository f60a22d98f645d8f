"""What one image costs in a run of several: the exported serving_default signature called in
process on the same 800 x 1333 JPEG repeated to batches of each size, ms per image.

    python benchmarks/batch_cost.py [--sizes 1 2 4] [--threads 2] [--runs 5] [--warmup 2]
                                    [--tiny] [--json out.json]

Model and image as served_path.py (R-50-FPN, random weights, score threshold 0); batch sizes
alternate within each of --runs rounds, so a drift in the machine's speed hits all alike; the
median round is reported. This is what request batching (`mask-rcnn serve --enable-batching`)
saves when requests queue: pick max_batch_size from it.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from served_path import (ROOT, bench_config, export_model, print_report,  # noqa: E402
                         random_weights, request_jpeg, timing_parser)


def main():
    parser = timing_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf

    from mask_rcnn_tf.serving.server import configure_threads

    configure_threads(args.threads)  # and one inter-op thread, as the dev server
    config = bench_config(args.tiny)
    jpeg = request_jpeg(args.tiny)
    with tempfile.TemporaryDirectory() as scratch:
        export_model(config, random_weights(config, scratch), Path(scratch) / "export",
                     "float32", None)
        signature = tf.saved_model.load(str(Path(scratch) / "export" / "1")).signatures[
            "serving_default"]

        def run(size):
            signature(images=tf.constant([jpeg] * size))["num_detections"].numpy()

        for size in args.sizes:
            for _ in range(args.warmup):
                run(size)
        per_image = {size: [] for size in args.sizes}
        for _ in range(args.runs):
            for size in args.sizes:
                start = time.perf_counter()
                run(size)
                per_image[size].append(1000.0 * (time.perf_counter() - start) / size)
    print_report({"ms_per_image": {size: statistics.median(v) for size, v in per_image.items()},
                  "rounds": per_image}, args.json)


if __name__ == "__main__":
    main()
