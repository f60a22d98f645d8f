"""One served request taken apart, the dev server against the in-process signature, the
response size of each mask output, and the bfloat16 export against the float32 one.

    python benchmarks/served_path.py [--threads 2] [--runs 5] [--warmup 2] [--rounds 3]
                                     [--tiny] [--json out.json]

Model: R-50-FPN (configs/maskrcnn_r50_fpn_torchvision.yaml), random weights (Keras
initializers, seed 0), score threshold 0 (100 detections); request: one 800 x 1333 JPEG
(skimage's coffee photograph, quality 90). --tiny: configs/shapes.yaml narrowed to 64 px, a
smoke test of the script. Everything runs with --threads intra-op threads; the dev server
(`mask-rcnn serve`, a child process) with --intra-op-threads --threads.

1. profile: median ms of each part of one request: decode (tf.io.decode_image), preprocessing
   (data.pipeline.preprocess_image, padded as the signature pads: 800 x 1344), network (the
   Keras model the export was written from, frozen norms folded as in the export, on that
   tensor), postprocessing (the in-process signature minus those three), serialization (outputs into typed TensorProto fields, as the
   server answers), transport (the dev server's latency minus everything measured on either
   side of it), client decode (parse, arrays, Detection objects with pasted masks).
2. server: median latency through the dev server (gRPC and REST) at concurrency 1 against the
   in-process signature call; the server's throughput at concurrency 1 and 4 (4 threads sharing
   a client that only receives the outputs: `predict_outputs`, no client-side mask pasting,
   which would compete with the server for the same cores), 2 x --runs requests per level,
   levels alternating over --rounds rounds, median round. The same (keys batching_*) for a
   second dev server that merges concurrent requests with serving/batching_parameters.txt
   (`--enable-batching --batching-parameters-file`, as tensorflow_model_server's
   --enable_batching), and the
   batch sizes it ran (batching_batch_sizes, {images: batches}, warm-up included).
3. masks: for 100 detections, the response bytes (the PredictResponse the server sends, typed
   fields) and client decode ms with 28 x 28 masks, detection_masks_full (uint8) and
   detection_masks_encoded_bytes (PNG and COCO RLE exports), whether the decoded masks equal the
   uint8 ones pixel for pixel, and the in-graph ms of building each (full_image_masks,
   encoded_masks png / rle on the request's detections).
4. bfloat16: the RLE export with --precision bfloat16 against the float32 one: median latency
   of the request in process, and on 20 shapes images (data/shapes.py) the float32 detections
   matched by a bfloat16 detection of the same class with box IoU > 0.9 (and also full-mask
   IoU > 0.8).
"""

import argparse
import concurrent.futures
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = (800, 1333)
TINY = ["data.min_size=64", "data.max_size=64", "model.backbone.base_width=8",
        "model.fpn.num_channels=16", "model.roi_heads.box_fc_dim=16",
        "model.roi_heads.mask_conv_dim=8"]
MODEL_NAME = "bench"
BATCHING_FILE = str(ROOT / "serving" / "batching_parameters.txt")


def median_ms(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def request_jpeg(tiny):
    from PIL import Image

    if tiny:
        pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    else:
        from skimage import data

        pixels = np.asarray(Image.fromarray(data.coffee()[20:380]).resize(
            IMAGE_SIZE[::-1], Image.BILINEAR))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def bench_config(tiny):
    from mask_rcnn_tf.config import load_config

    if tiny:
        return load_config(ROOT / "configs" / "shapes.yaml",
                           TINY + ["model.roi_heads.score_threshold=0.0"])
    return load_config(ROOT / "configs" / "maskrcnn_r50_fpn_torchvision.yaml",
                       ["model.roi_heads.score_threshold=0.0"])


def random_weights(config, folder):
    """Writes the model's random weights (Keras initializers, seed 0) into `folder`; returns
    the file's path, for export_model."""
    import keras

    from mask_rcnn_tf.modeling.factory import build_model

    keras.utils.set_random_seed(0)
    path = str(Path(folder) / "random.weights.h5")
    build_model(config.model, image_size=config.data.pad_size).save_weights(path)
    return path


def export_model(config, weights, base, precision, encoding):
    """Writes base/1 from `weights`; encoding None, or "png" (with the full uint8 masks too)
    or "rle" for detection_masks_encoded_bytes."""
    from mask_rcnn_tf.export.saved_model import build_model_for_precision, save_servable

    model = build_model_for_precision(config, precision)
    model.load_weights(weights)
    names = [f"class{i}" for i in range(1, config.model.num_classes)]
    save_servable(model, str(Path(base) / "1"), class_names=names, data_config=config.data,
                  full_masks=encoding == "png", encoded_masks=encoding,
                  mask_threshold=config.eval.mask_threshold)
    return model


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(base, threads, log, *options):
    """(process, gRPC target, REST target) of `mask-rcnn serve` logging into the file `log`."""
    port, rest_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mask_rcnn_tf.cli", "serve", "--model-base-path", str(base),
         "--model-name", MODEL_NAME, "--port", str(port), "--rest-port", str(rest_port),
         "--intra-op-threads", str(threads), *options],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    return process, f"127.0.0.1:{port}", f"127.0.0.1:{rest_port}"


def _batch_sizes(log_path):
    """{images: batches} from a batching server's log (logged when it stops), or None."""
    for line in Path(log_path).read_text().splitlines():
        if "batches run, {images: batches}: " in line:
            return json.loads(line.split("batches run, {images: batches}: ", 1)[1])
    return None


def _profile(args, config, model, signature, jpeg, target, rest_target, batching_target):
    import tensorflow as tf

    from mask_rcnn_tf.data.inputs import square_pad_size
    from mask_rcnn_tf.data.pipeline import pad_to_multiple, preprocess_image
    from mask_rcnn_tf.serving import MaskRCNNClient, MaskRCNNRestClient
    from mask_rcnn_tf.serving.detections import detections_from_outputs
    from mask_rcnn_tf.serving.tensors import make_ndarray, make_tensor_proto
    from tensorflow_serving.apis import predict_pb2

    # The dev server loads the model and replays its warm-up requests on the same 2 cores:
    # nothing is timed before it reports ready.
    with MaskRCNNClient(target, MODEL_NAME, timeout=600) as client:
        client.wait_until_ready(timeout=900)
    d = config.data
    decode = tf.function(lambda data: tf.io.decode_image(data, channels=3,
                                                         expand_animations=False))
    pad_size = square_pad_size(d)

    @tf.function
    def preprocess(image):
        # As the signature prepares a one-image request: the square pad_size only under
        # data.pad_mode square, else the resized image padded to multiples of size_divisibility.
        padded, resized, scale = preprocess_image(
            image, min_size=d.min_size, max_size=d.max_size, pad_size=pad_size, mean=d.mean,
            std=d.std, channel_order=d.channel_order)
        if pad_size is None:
            padded = pad_to_multiple(padded[None], d.size_divisibility)[0]
        return padded, resized, scale

    network = tf.function(lambda images, sizes: model({"images": images, "image_sizes": sizes},
                                                      training=False))
    pixels = decode(tf.constant(jpeg))
    padded, resized, _ = preprocess(pixels)
    sizes = tf.cast(resized, tf.float32)[None]
    encoded = tf.constant([jpeg])
    outputs = {k: v.numpy() for k, v in signature(images=encoded).items()}

    def serialize():
        response = predict_pb2.PredictResponse()
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(make_tensor_proto(array, use_tensor_content=False))
        return response.SerializeToString()

    wire = serialize()

    def client_decode():
        response = predict_pb2.PredictResponse.FromString(wire)
        arrays = {name: make_ndarray(proto) for name, proto in response.outputs.items()}
        return detections_from_outputs(arrays, 0, None, None, 0.0, 0.5)

    ms = {
        "decode": median_ms(lambda: decode(tf.constant(jpeg)).numpy(), args.runs, args.warmup),
        "preprocessing": median_ms(lambda: preprocess(pixels)[0].numpy(), args.runs,
                                    args.warmup),
        "network": median_ms(lambda: network(padded[None], sizes)["num_detections"].numpy(),
                              args.runs, args.warmup),
        "in_process_signature": median_ms(
            lambda: signature(images=encoded)["num_detections"].numpy(), args.runs, args.warmup),
        "serialization": median_ms(serialize, args.runs, args.warmup),
        "client_decode": median_ms(client_decode, args.runs, args.warmup),
    }
    ms["postprocessing"] = ms["in_process_signature"] - ms["decode"] - ms["preprocessing"] \
        - ms["network"]
    server = {}
    for name, client_class, address in (("grpc", MaskRCNNClient, target),
                                        ("rest", MaskRCNNRestClient, rest_target)):
        with client_class(address, MODEL_NAME, timeout=600) as client:
            client.wait_until_ready(timeout=900)
            server[f"{name}_latency_c1"] = median_ms(lambda: client.predict([jpeg]), args.runs,
                                                      args.warmup)
    ms["transport"] = server["grpc_latency_c1"] - ms["in_process_signature"] \
        - ms["serialization"] - ms["client_decode"]
    with MaskRCNNClient(batching_target, MODEL_NAME, timeout=600) as client:
        client.wait_until_ready(timeout=900)
        server["batching_grpc_latency_c1"] = median_ms(lambda: client.predict([jpeg]),
                                                        args.runs, args.warmup)
    server.update(_throughput({"": target, "batching_": batching_target}, jpeg, 2 * args.runs,
                              args.rounds))
    server["latency_ratio_c1"] = server["grpc_latency_c1"] / ms["in_process_signature"]
    server["batching_latency_ratio_c1"] = (server["batching_grpc_latency_c1"]
                                           / ms["in_process_signature"])
    for prefix in ("", "batching_"):
        server[f"{prefix}throughput_ratio_c4_c1"] = (server[f"{prefix}throughput_c4_per_s"]
                                                     / server[f"{prefix}throughput_c1_per_s"])
    return ms, server


def _throughput(targets, jpeg, count, rounds):
    """Images per second of each server at concurrency 1 and 4: {prefix}throughput_c{n}_per_s
    (median round) and {prefix}throughput_c{n}_rounds.

    Throughput is the server's: predict_outputs leaves out the client's mask pasting, which on
    this one machine would take the server's cores while the next request runs. Servers and
    levels alternate over `rounds` rounds of `count` requests, so a drift in the machine's
    speed hits all alike.
    """
    from mask_rcnn_tf.serving import MaskRCNNClient

    rates = {(prefix, concurrency): [] for prefix in targets for concurrency in (1, 4)}
    clients = {prefix: MaskRCNNClient(target, MODEL_NAME, timeout=600)
               for prefix, target in targets.items()}
    try:
        for _ in range(rounds):
            for prefix, concurrency in rates:
                start = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(lambda _: clients[prefix].predict_outputs([jpeg]),
                                  range(count)))
                rates[prefix, concurrency].append(count / (time.perf_counter() - start))
    finally:
        for client in clients.values():
            client.close()
    report = {}
    for (prefix, concurrency), values in rates.items():
        report[f"{prefix}throughput_c{concurrency}_per_s"] = statistics.median(values)
        report[f"{prefix}throughput_c{concurrency}_rounds"] = values
    return report


def _mask_sizes(args, signatures, jpeg):
    """Response bytes, client decode ms and in-graph ms of each kind of mask output."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from mask_rcnn_tf.export import mask_encoding, postprocess
    from mask_rcnn_tf.serving.detections import detections_from_outputs
    from mask_rcnn_tf.serving.tensors import make_ndarray, make_tensor_proto

    encoded = tf.constant([jpeg])
    outputs = {encoding: {k: v.numpy() for k, v in signatures[encoding](images=encoded).items()}
               for encoding in ("png", "rle")}
    base = ["num_detections", "detection_boxes", "detection_classes", "detection_scores",
            "image_sizes"]
    variants = {"masks_28x28": ("png", "detection_masks"),
                "full_uint8": ("png", "detection_masks_full"),
                "encoded_png": ("png", "detection_masks_encoded_bytes"),
                "encoded_rle": ("rle", "detection_masks_encoded_bytes")}
    results, masks = {}, {}
    for name, (encoding, mask_output) in variants.items():
        response = predict_pb2.PredictResponse()
        for key in base + [mask_output]:
            response.outputs[key].CopyFrom(make_tensor_proto(outputs[encoding][key],
                                                             use_tensor_content=False))
        wire = response.SerializeToString()

        def decode(wire=wire):
            parsed = predict_pb2.PredictResponse.FromString(wire)
            arrays = {key: make_ndarray(proto) for key, proto in parsed.outputs.items()}
            return detections_from_outputs(arrays, 0, None, None, 0.0, 0.5)

        masks[name] = np.array([d.mask for d in decode()])
        results[name] = {"response_bytes": len(wire),
                         "client_decode_ms": median_ms(decode, args.runs, args.warmup)}
    for name in ("encoded_png", "encoded_rle"):
        results[f"{name}_equals_full"] = bool(np.array_equal(masks[name], masks["full_uint8"]))
    results["detections"] = int(len(masks["full_uint8"]))
    # In-graph cost of each, on these detections (clipped boxes: close to the served ones).
    out = outputs["png"]
    valid = postprocess.valid_rows(out["num_detections"], out["detection_boxes"].shape[1])
    args_ = (tf.constant(out["detection_masks"]), tf.constant(out["detection_boxes"]),
             tf.constant(out["image_sizes"]))
    builders = {
        "full_uint8": tf.function(lambda m, b, s: postprocess.full_image_masks(m, b, s, 0.5)),
        "encoded_png": tf.function(lambda m, b, s: mask_encoding.encoded_masks(
            m, b, s, valid, 0.5, "png")),
        "encoded_rle": tf.function(lambda m, b, s: mask_encoding.encoded_masks(
            m, b, s, valid, 0.5, "rle")),
    }
    for name, build in builders.items():
        results[name]["in_graph_ms"] = median_ms(lambda build=build: build(*args_).numpy(),
                                                  args.runs, args.warmup)
    return results


def box_iou(a, b):
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return inter / union if union > 0 else 0.0


def _bfloat16(args, signature_f32, signature_bf16, jpeg, scratch):
    import tensorflow as tf

    from mask_rcnn_tf.data.shapes import make_shapes
    from mask_rcnn_tf.serving.images import decode_mask

    # On a shared machine the two exports alternate, so load drifts hit both alike.
    encoded = tf.constant([jpeg])
    calls = {name: (lambda s=s: s(images=encoded)["num_detections"].numpy())
             for name, s in (("float32", signature_f32), ("bfloat16", signature_bf16))}
    for call in calls.values():
        for _ in range(args.warmup):
            call()
    times = {name: [] for name in calls}
    for _ in range(args.runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    latency = {name: 1000.0 * statistics.median(values) for name, values in times.items()}
    shapes = make_shapes(Path(scratch) / "shapes", num_images=20, seed=1, image_size=128)
    images = sorted((Path(shapes["annotations_path"]).parent / "images").glob("*.png"))
    total = box_matched = mask_matched = 0
    for path in images:
        data = tf.constant([path.read_bytes()])
        full, low = ({k: v.numpy() for k, v in s(images=data).items()}
                     for s in (signature_f32, signature_bf16))
        size = tuple(full["image_sizes"][0])
        low_masks = [decode_mask(m, size) for m in low["detection_masks_encoded_bytes"][0]]
        for i in range(int(full["num_detections"][0])):
            total += 1
            mask = decode_mask(full["detection_masks_encoded_bytes"][0, i], size)
            best_box = best_mask = False
            for j in range(int(low["num_detections"][0])):
                if low["detection_classes"][0, j] != full["detection_classes"][0, i] or \
                        box_iou(low["detection_boxes"][0, j], full["detection_boxes"][0, i]) <= 0.9:
                    continue
                best_box = True
                union = np.logical_or(mask, low_masks[j]).sum()
                if union and np.logical_and(mask, low_masks[j]).sum() / union > 0.8:
                    best_mask = True
                    break
            box_matched += best_box
            mask_matched += best_mask
    return {"latency_ms": latency, "speedup": latency["float32"] / latency["bfloat16"],
            "detections": total, "box_iou_0.9_rate": box_matched / max(total, 1),
            "box_and_mask_iou_rate": mask_matched / max(total, 1)}


def print_report(report, path=None):
    """Prints the JSON report, and writes it to `path` too when given (--json)."""
    print(json.dumps(report, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)


def timing_parser(doc):
    """The options every timing script here shares: --threads, --runs, --warmup, --tiny, --json."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json")
    return parser


def main():
    parser = timing_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3,
                        help="throughput rounds (each level and server once per round)")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf

    from mask_rcnn_tf.serving.server import configure_threads

    configure_threads(args.threads)  # and one inter-op thread, as the dev server
    config = bench_config(args.tiny)
    jpeg = request_jpeg(args.tiny)
    report = {}
    with tempfile.TemporaryDirectory() as scratch:
        weights = random_weights(config, scratch)
        exports = {(precision, encoding): Path(scratch) / f"{precision}_{encoding}"
                   for precision, encoding in (("float32", None), ("float32", "png"),
                                               ("float32", "rle"), ("bfloat16", "rle"))}
        models = {key: export_model(config, weights, path, *key) for key, path in exports.items()}
        signatures = {key: tf.saved_model.load(str(path / "1")).signatures["serving_default"]
                      for key, path in exports.items()}
        servers = {}
        logs = {name: Path(scratch) / f"{name}_server.log" for name in ("plain", "batching")}
        try:
            with open(logs["plain"], "w") as plain_log, open(logs["batching"], "w") as log:
                servers["plain"] = _start_server(exports[("float32", None)], args.threads,
                                                 plain_log)
                servers["batching"] = _start_server(exports[("float32", None)], args.threads,
                                                    log, "--enable-batching",
                                                    "--batching-parameters-file",
                                                    BATCHING_FILE)
            _, target, rest_target = servers["plain"]
            report["profile_ms"], report["server"] = _profile(
                args, config, models[("float32", None)], signatures[("float32", None)], jpeg,
                target, rest_target, servers["batching"][1])
        finally:
            for process, _, _ in servers.values():
                process.terminate()
                process.wait()
        report["server"]["batching_batch_sizes"] = _batch_sizes(logs["batching"])
        report["masks"] = _mask_sizes(
            args, {"png": signatures[("float32", "png")], "rle": signatures[("float32", "rle")]},
            jpeg)
        report["bfloat16"] = _bfloat16(args, signatures[("float32", "rle")],
                                       signatures[("bfloat16", "rle")], jpeg, scratch)
    print_report(report, args.json)


if __name__ == "__main__":
    main()
