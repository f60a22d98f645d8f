"""Serving latency and throughput: the development server (`mask-rcnn serve`) over gRPC.

For each case CONFIG:HEIGHTxWIDTH:REQUESTS it builds the config's model with random weights
(timing does not depend on them), exports it with the project's serving signatures, starts
`mask-rcnn serve` in a subprocess, sends one untimed warm-up request, then at each concurrency
level sends REQUESTS single-image requests (a JPEG of HEIGHTxWIDTH) from that many client threads,
and prints p50 / p95 request latency and images per second, with the CPU it ran on.

    python benchmarks/serving.py                       # both default cases, concurrency 1 and 8
    python benchmarks/serving.py --case configs/shapes.yaml:128x128:40 --concurrency 1 4

The numbers measure the development server, which runs requests side by side without merging
them; tensorflow_model_server with --enable_batching merges concurrent requests into one run.
"""

import argparse
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = ["configs/shapes.yaml:128x128:40", "configs/maskrcnn_r50_fpn_coco.yaml:800x1333:8"]
MODEL_NAME = "bench"


def parse_case(text):
    """'CONFIG:HxW:N' -> (config path, (h, w), N)."""
    try:
        config, size, requests = text.rsplit(":", 2)
        height, width = (int(v) for v in size.lower().split("x"))
        return config, (height, width), int(requests)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--case {text!r}: expected CONFIG:HEIGHTxWIDTH:REQUESTS, "
                                         f"e.g. configs/shapes.yaml:128x128:40") from None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def export_random_model(config_path, base, overrides=()):
    """Exports the config's model (with `--set` style overrides) with random weights to
    base/1."""
    import keras

    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.export.saved_model import save_servable
    from mask_rcnn_tf.modeling.factory import build_model

    config = load_config(os.path.join(REPO, config_path), list(overrides))
    keras.utils.set_random_seed(0)
    model = build_model(config.model, image_size=config.data.pad_size)
    class_names = [f"class_{i}" for i in range(1, config.model.num_classes)]
    save_servable(model, os.path.join(base, "1"), class_names=class_names,
                  data_config=config.data)


def test_image(height, width):
    """JPEG bytes of a smooth synthetic image (noise would make an unusually large file)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([127 + 100 * np.sin(x / 23.0), 127 + 100 * np.cos(y / 17.0),
                      127 + 100 * np.sin((x + y) / 31.0)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_level(client, image, concurrency, requests):
    """Latencies (s) of `requests` calls spread over `concurrency` threads, and the wall time."""
    latencies, failures = [], []
    remaining = iter(range(requests))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            start = time.perf_counter()
            try:
                client.predict_outputs([image])
            except Exception as err:  # Reported after the run.
                failures.append(err)
                return
            latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
    return np.array(latencies), wall


def bench_case(config_path, size, requests, levels, timeout, overrides=()):
    from mask_rcnn_tf.serving import MaskRCNNClient

    rows = []
    with tempfile.TemporaryDirectory() as base:
        start = time.perf_counter()
        export_random_model(config_path, base, overrides)
        print(f"# exported {config_path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mask_rcnn_tf.cli", "serve", "--model-base-path", base,
             "--model-name", MODEL_NAME, "--port", str(port), "--max-workers", str(max(levels))],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = MaskRCNNClient(f"127.0.0.1:{port}", MODEL_NAME, timeout=timeout)
            client.wait_until_ready(timeout=600)
            image = test_image(*size)
            client.predict_outputs([image])  # warm-up, untimed
            for concurrency in levels:
                latencies, wall = run_level(client, image, concurrency,
                                            max(requests, concurrency))
                rows.append((config_path, f"{size[0]}x{size[1]}", concurrency, len(latencies),
                             1000 * np.percentile(latencies, 50),
                             1000 * np.percentile(latencies, 95), len(latencies) / wall))
            client.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", type=parse_case, metavar="CONFIG:HxW:N",
                        help=f"repeatable; default: {' '.join(DEFAULT_CASES)}")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cases = args.case or [parse_case(case) for case in DEFAULT_CASES]
    rows = []
    for config_path, size, requests in cases:
        rows.extend(bench_case(config_path, size, requests, args.concurrency, args.timeout))
    import tensorflow as tf

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; TensorFlow {tf.__version__}; "
          f"server: mask-rcnn serve (no request batching)\n")
    print("| config | image | concurrency | requests | p50 ms | p95 ms | images/s |")
    print("|---|---|---|---|---|---|---|")
    for config_path, size, concurrency, count, p50, p95, rate in rows:
        print(f"| {config_path} | {size} | {concurrency} | {count} | {p50:.0f} | {p95:.0f} | "
              f"{rate:.2f} |")


if __name__ == "__main__":
    main()
