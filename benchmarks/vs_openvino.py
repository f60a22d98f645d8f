"""Our served model against OpenVINO running torchvision's Mask R-CNN, float32 and bfloat16, on
the same machine in one run.

    pip install -e .[bench]        # openvino, onnx
    python benchmarks/vs_openvino.py [--threads 2] [--runs 5] [--warmup 2] [--tiny]
                                     [--json out.json]

OpenVINO side: torchvision's maskrcnn_resnet50_fpn (random weights, seed 0; score threshold 0,
100 detections, 1000 proposals, as benchmarks/vs_torchvision.py builds it) exported to ONNX with
the TorchScript exporter, with the per-detection mask paste left out of the graph
(transform.paste_masks_in_image replaced by the identity: its 28 x 28 masks come out as they
are, as our serving_default returns detection_masks), run on an 800 x 1333 image, which
torchvision's transform pads to 800 x 1344. OpenVINO CPU plugin with INFERENCE_NUM_THREADS
--threads, denormals flushed (CPU_DENORMALS_OPTIMIZATION), INFERENCE_PRECISION_HINT f32 and
bf16 (bf16 needs avx512_bf16 or AMX; elsewhere OpenVINO runs f32 and says so in the report).
Our side: the serving_default signature of our export (random weights; score threshold 0) on the
same photograph as an 800 x 1333 JPEG, float32 and --precision bfloat16, in process with
--threads intra-op threads (the dev server adds transport: benchmarks/served_path.py).
Reported: median wall ms of each, and ours / OpenVINO's.
--tiny: 320 x 480 image and the tiny shapes model on our side, to smoke-test the script.
"""

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from served_path import (IMAGE_SIZE, bench_config, export_model, median_ms,  # noqa: E402
                         print_report, random_weights, timing_parser)


def _photo(size):
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()[20:380]).resize(size[::-1], Image.BILINEAR))


def _onnx_export(path, size, threads):
    import torch
    import torchvision
    from torchvision.models.detection import transform

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, box_detections_per_img=100,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
        min_size=size[0], max_size=max(size)).eval()
    # Leave the per-detection paste out of the graph (our signature returns 28 x 28 masks).
    transform.paste_masks_in_image = lambda masks, boxes, image_shape, padding=1: masks
    image = torch.from_numpy(_photo(size).copy()).permute(2, 0, 1).float() / 255.0
    torch.onnx.export(model, ([image],), path, opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["boxes", "labels", "scores", "masks"])
    return image.numpy()


def _openvino_ms(path, image, precision, args):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": args.threads, "CPU_DENORMALS_OPTIMIZATION": True,
              "INFERENCE_PRECISION_HINT": precision}
    compiled = core.compile_model(str(path), "CPU", config)
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    request = compiled.create_infer_request()
    ms = median_ms(lambda: request.infer({0: image}), args.runs, args.warmup)
    detections = int(request.get_output_tensor(0).data.shape[0])
    # [D, 1, 28, 28] when the paste is out of the graph, as intended.
    mask_shape = list(request.get_output_tensor(3).data.shape)
    return {"ms": ms, "precision_used": used, "detections": detections,
            "mask_shape": mask_shape}


def main():
    args = timing_parser(__doc__).parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    size = (320, 480) if args.tiny else IMAGE_SIZE
    report = {"openvino": {}, "ours": {}}
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / "maskrcnn.onnx"
        image = _onnx_export(onnx_path, size, args.threads)
        for precision in ("f32", "bf16"):
            report["openvino"][precision] = _openvino_ms(onnx_path, image, precision, args)

        import io

        import tensorflow as tf
        from PIL import Image

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(2)
        config = bench_config(args.tiny)
        buffer = io.BytesIO()
        Image.fromarray(_photo(size)).save(buffer, format="JPEG", quality=90)
        jpeg = tf.constant([buffer.getvalue()])
        weights = random_weights(config, scratch)
        for precision, key in (("float32", "f32"), ("bfloat16", "bf16")):
            base = Path(scratch) / precision
            export_model(config, weights, base, precision, None)
            signature = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
            ms = median_ms(lambda: signature(images=jpeg)["num_detections"].numpy(),
                            args.runs, args.warmup)
            report["ours"][key] = {"ms": ms, "ratio_to_openvino":
                                   ms / report["openvino"][key]["ms"]}
    print_report(report, args.json)


if __name__ == "__main__":
    main()
