"""The `mask-rcnn` command: parses arguments and calls one package function per sub-command.

Errors the user can fix (bad config, bad data, missing files) end in one line on stderr and
exit status 2; TensorFlow is imported only by the sub-commands that need it.
"""

import argparse
import json
import logging
import os
import sys

from mask_rcnn_tf.config import STRATEGY_NAMES


def _add_config_args(parser, weights=False):
    parser.add_argument("--config", required=True, help="experiment YAML under configs/")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        dest="overrides",
                        help="override config keys, e.g. train.steps=200 data.val.images=/x")
    if weights:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--model-dir", help="training folder (its latest checkpoint is used)")
        source.add_argument("--weights", help="a .weights.h5 file")
    else:
        parser.add_argument("--model-dir", required=True, help="folder for checkpoints and logs")


def _parser():
    parser = argparse.ArgumentParser(prog="mask-rcnn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    shapes = commands.add_parser("make-shapes", help="write the synthetic shapes dataset")
    shapes.add_argument("--output", required=True)
    shapes.add_argument("--num-images", type=int, required=True)
    shapes.add_argument("--seed", type=int, required=True)
    shapes.add_argument("--image-size", type=int, default=128)
    shapes.add_argument("--overwrite", action="store_true")
    shapes.add_argument("--shape-set", choices=("basic", "extra"), default="basic",
                        help="basic: circle, square, triangle; extra: ring, cross, hexagon, "
                             "diamond (the fine-tuning demo, configs/shapes_finetune.yaml)")

    figures = commands.add_parser("make-figures", help="write the synthetic stick-figure "
                                                       "keypoint dataset")
    figures.add_argument("--output", required=True)
    figures.add_argument("--num-images", type=int, required=True)
    figures.add_argument("--seed", type=int, required=True)
    figures.add_argument("--image-size", type=int, default=128)
    figures.add_argument("--overwrite", action="store_true")

    records = commands.add_parser(
        "make-tfrecords", help="check a COCO-format dataset and write it as sharded TFRecords "
                               "(train with data.train.tfrecords=PREFIX-*)")
    records.add_argument("--annotations", required=True, help="COCO-format JSON file")
    records.add_argument("--images", required=True, help="folder of the images")
    records.add_argument("--output", required=True,
                         help="shard prefix: writes PREFIX-00000-of-000NN.tfrecord and "
                              "PREFIX.manifest.json")
    records.add_argument("--num-shards", type=int,
                         help="default: one shard per 1024 images")
    records.add_argument("--workers", type=int,
                         help="processes decoding images for the check (default: one per CPU)")
    records.add_argument("--overwrite", action="store_true",
                         help="replace the shards of an earlier conversion to PREFIX")

    train = commands.add_parser("train", help="train with model.fit (resumes in --model-dir)")
    _add_config_args(train)
    train.add_argument("--strategy", choices=STRATEGY_NAMES,
                       help="tf.distribute strategy, overrides train.strategy (default auto: "
                            "multi_worker if TF_CONFIG names a cluster, mirrored over several "
                            "local GPUs, else one_device); see docs/distributed.md")

    evaluate = commands.add_parser("evaluate", help="COCO bbox and segm AP on data.val")
    _add_config_args(evaluate, weights=True)
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")

    predict = commands.add_parser("predict", help="draw detections on images")
    _add_config_args(predict, weights=True)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--output-dir", required=True)

    export = commands.add_parser("export", help="write a versioned SavedModel for TF Serving")
    _add_config_args(export, weights=True)
    export.add_argument("--export-base", required=True,
                        help="model base path: the version is written to EXPORT_BASE/VERSION/")
    export.add_argument("--version", type=int,
                        help="positive integer (default: one past the highest version present)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument("--full-masks", action="store_true",
                        help="add detection_masks_full: uint8 masks pasted into the images")
    export.add_argument("--encoded-masks", choices=["png", "rle"],
                        help="add detection_masks_encoded_bytes: each detection's full-image "
                             "mask as a PNG or as COCO RLE counts (KBs, not the MBs of "
                             "--full-masks)")
    export.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: the network computes under Keras' mixed_bfloat16 "
                             "(inputs and outputs keep their dtypes)")

    serve = commands.add_parser(
        "serve", help="development gRPC server with TF Serving's API (production: "
                      "tensorflow_model_server, see serving/README.md)")
    serve.add_argument("--model-base-path", required=True,
                       help="folder of SavedModel version folders 1/, 2/, ...; the latest is "
                            "served")
    serve.add_argument("--model-name", required=True)
    serve.add_argument("--port", type=int, default=8500, help="gRPC port (0: pick a free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all)")
    serve.add_argument("--max-workers", type=int, default=8, help="requests handled at once")
    serve.add_argument("--rest-port", type=int,
                       help="also answer TF Serving's REST API on this port (8501 by "
                            "convention; 0: pick a free one)")
    serve.add_argument("--intra-op-threads", type=int,
                       help="TensorFlow intra-op threads (default: the cores this process may "
                            "use)")
    serve.add_argument("--inter-op-threads", type=int, help="TensorFlow inter-op threads "
                                                            "(default: 1)")
    serve.add_argument("--max-concurrent-runs", type=int, default=1,
                       help="model runs at once; more requests wait (default 1: each run "
                            "already uses every core)")
    serve.add_argument("--enable-batching", action="store_true",
                       help="merge concurrent requests into batched model runs, as "
                            "tensorflow_model_server's --enable_batching (TF Serving's defaults, "
                            "or --batching-parameters-file)")
    serve.add_argument("--batching-parameters-file",
                       help="with --enable-batching: TF Serving's text-format "
                            "BatchingParameters (e.g. serving/batching_parameters.txt)")
    serve.add_argument("--grace-seconds", type=float, default=10.0,
                       help="time given to requests in flight on SIGTERM")

    client = commands.add_parser("client", help="send images to a TF Serving gRPC server, print "
                                                "the detections as JSON")
    client.add_argument("images", nargs="+", metavar="IMAGE")
    client.add_argument("--server", required=True,
                        help="HOST:PORT of the gRPC port (with --rest: of the REST port)")
    client.add_argument("--rest", action="store_true",
                        help="talk to TF Serving's REST API (port 8501 by convention) instead "
                             "of gRPC")
    client.add_argument("--model-name", required=True)
    client.add_argument("--version", type=int, help="model version (default: the latest)")
    client.add_argument("--signature", default="serving_default",
                        help="serving_default (encoded files) or serving_tensor (pixels)")
    client.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    client.add_argument("--wait", type=float, default=0.0,
                        help="first wait up to this many seconds for the model to be available")
    client.add_argument("--min-score", type=float, default=0.5)
    client.add_argument("--draw", metavar="OUT_DIR", help="also draw each image's detections "
                                                          "to OUT_DIR/<image stem>.png")

    convert = commands.add_parser(
        "convert-torchvision", help="convert a torchvision Mask R-CNN .pth into .weights.h5 "
                                    "(needs torch)")
    convert.add_argument("--checkpoint", required=True, help="torchvision state dict (.pth)")
    convert.add_argument("--output", required=True, help="FILE.weights.h5 to write")
    convert.add_argument("--config", default="configs/maskrcnn_r50_fpn_torchvision.yaml",
                         help="model config matching the checkpoint (default: %(default)s)")
    convert.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                         dest="overrides", help="override config keys, e.g. model.num_classes=81")
    convert.add_argument("--coco-contiguous", action="store_true",
                         help="keep background + the 80 COCO categories of the 91 outputs, "
                              "numbered 1..80 by category id (needs model.num_classes=81)")
    convert.add_argument("--allow-missing", nargs="+", default=[], metavar="HEAD",
                         choices=["mask_head", "keypoint_head"],
                         help="heads the checkpoint may lack entirely, kept as initialized "
                              "(torchvision's Keypoint R-CNN: mask_head)")
    return parser


def _config(args):
    from mask_rcnn_tf.config import load_config

    return load_config(args.config, args.overrides)


def _load_model(args, config):
    from mask_rcnn_tf.modeling.factory import build_model
    from mask_rcnn_tf.weights.io import load_model_weights

    model = build_model(config.model, image_size=config.data.pad_size)
    load_model_weights(model, model_dir=args.model_dir, weights=args.weights)
    return model


def run(args):
    if args.command == "make-shapes":
        from mask_rcnn_tf.data.shapes import make_shapes

        summary = make_shapes(args.output, args.num_images, args.seed,
                              image_size=args.image_size, overwrite=args.overwrite,
                              shape_set=args.shape_set)
        print(json.dumps(summary))
    elif args.command == "make-figures":
        from mask_rcnn_tf.data.figures import make_figures

        summary = make_figures(args.output, args.num_images, args.seed,
                               image_size=args.image_size, overwrite=args.overwrite)
        print(json.dumps(summary))
    elif args.command == "make-tfrecords":
        from mask_rcnn_tf.data.make_tfrecords import make_tfrecords

        print(json.dumps(make_tfrecords(args.annotations, args.images, args.output,
                                        num_shards=args.num_shards, workers=args.workers,
                                        overwrite=args.overwrite)))
    elif args.command == "train":
        from mask_rcnn_tf.training.train import train

        if args.strategy:
            args.overrides.append(f"train.strategy={args.strategy}")
        train(_config(args), args.model_dir)
    elif args.command == "evaluate":
        from mask_rcnn_tf.data.inputs import load_split
        from mask_rcnn_tf.evaluation.evaluate import evaluate_model
        from mask_rcnn_tf.io_utils import atomic_write_json
        from mask_rcnn_tf.weights.labels import label_schema_for

        config = _config(args)
        # The classes of the schema beside the weights, when there is one, must fit the model:
        # checked (one small file) before the images are checked and the model is built.
        label_schema_for(config, args.model_dir, args.weights, from_annotations=False)
        dataset = load_split(config.data, "val")
        model = _load_model(args, config)
        metrics = evaluate_model(model, config.data, dataset,
                                 batch_size=config.eval.batch_size,
                                 mask_threshold=config.eval.mask_threshold,
                                 keypoint_sigmas=config.eval.keypoint_oks_sigmas,
                                 backend=config.eval.backend)
        print(json.dumps(metrics, indent=2))
        if args.output:
            atomic_write_json(args.output, metrics)
    elif args.command == "predict":
        from mask_rcnn_tf.evaluation.predict import predict_images, read_image
        from mask_rcnn_tf.weights.labels import label_schema_for

        config = _config(args)
        schema = label_schema_for(config, args.model_dir, args.weights)
        images = {path: read_image(path) for path in args.images}
        predict_images(_load_model(args, config), config, images, args.output_dir,
                       schema.categories, skeleton=schema.skeleton)
    elif args.command == "export":
        from mask_rcnn_tf.export.saved_model import export_saved_model

        path = export_saved_model(_config(args), args.export_base, model_dir=args.model_dir,
                                  weights=args.weights, version=args.version,
                                  overwrite=args.overwrite, full_masks=args.full_masks,
                                  encoded_masks=args.encoded_masks, precision=args.precision)
        print(json.dumps({"export_dir": path}))
    elif args.command == "serve":
        from mask_rcnn_tf.serving.batching_parameters import (BatchingParameters,
                                                              load_batching_parameters)
        from mask_rcnn_tf.serving.server import serve

        if args.batching_parameters_file and not args.enable_batching:
            # tensorflow_model_server refuses this combination too.
            raise ValueError("--batching-parameters-file is set without --enable-batching")
        batching = None
        if args.batching_parameters_file:
            batching = load_batching_parameters(args.batching_parameters_file)
        elif args.enable_batching:
            batching = BatchingParameters()
        serve(args.model_base_path, args.model_name, host=args.host, port=args.port,
              max_workers=args.max_workers, grace_seconds=args.grace_seconds,
              rest_port=args.rest_port, intra_op_threads=args.intra_op_threads,
              inter_op_threads=args.inter_op_threads,
              max_concurrent_runs=args.max_concurrent_runs, batching=batching)
    elif args.command == "client":
        _client(args)
    elif args.command == "convert-torchvision":
        from mask_rcnn_tf.convert import convert_torchvision_checkpoint

        print(json.dumps(convert_torchvision_checkpoint(
            _config(args), args.checkpoint, args.output, coco_contiguous=args.coco_contiguous,
            allow_missing=tuple(args.allow_missing))))


def _client(args):
    """`mask-rcnn client`: prints one JSON object per image (masks as area and COCO RLE;
    keypoints, when the model has them, as {name: [x, y, score]})."""
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    from mask_rcnn_tf.evaluation.predict import keypoints_to_draw
    from mask_rcnn_tf.evaluation.visualize import draw_detections
    from mask_rcnn_tf.io_utils import atomic_path
    from mask_rcnn_tf.serving import MaskRCNNClient, MaskRCNNRestClient

    client_class = MaskRCNNRestClient if args.rest else MaskRCNNClient
    with client_class(args.server, args.model_name, signature=args.signature,
                      version=args.version, timeout=args.timeout) as client:
        if args.wait > 0:
            client.wait_until_ready(timeout=args.wait)
        results = client.predict(args.images, min_score=args.min_score)
        skeleton = client.skeleton() or ()
    report = []
    for path, detections in zip(args.images, results):
        objects = []
        for d in detections:
            rle = mask_utils.encode(np.asfortranarray(d.mask.astype(np.uint8)))
            objects.append({"class_id": d.class_id, "class_name": d.class_name,
                            "score": round(d.score, 4),
                            "box": [round(float(v), 2) for v in d.box],
                            "mask_area": int(d.mask.sum()),
                            "mask_rle": {"size": rle["size"], "counts": rle["counts"].decode()}})
            if d.keypoints is not None:
                points = [[round(float(x), 2), round(float(y), 2), round(float(score), 4)]
                          for x, y, score in d.keypoints]
                # By name when the server gave names, else a list in the model's keypoint order.
                objects[-1]["keypoints"] = (dict(zip(d.keypoint_names, points))
                                            if d.keypoint_names is not None else points)
        report.append({"image": path, "detections": objects})
        if args.draw:
            Path(args.draw).mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            names = {d.class_id: d.class_name or str(d.class_id) for d in detections}
            keypoints = None
            if detections and detections[0].keypoints is not None:
                keypoints = keypoints_to_draw([d.keypoints for d in detections])
            drawn = draw_detections(
                pixels, [d.box for d in detections], [d.class_id for d in detections],
                [d.score for d in detections],
                np.array([d.mask for d in detections]).reshape(-1, *pixels.shape[:2]), names,
                score_threshold=args.min_score, keypoints=keypoints, skeleton=skeleton)
            with atomic_path(Path(args.draw) / f"{Path(path).stem}.png") as temp_path:
                Image.fromarray(drawn).save(temp_path, format="PNG")
    print(json.dumps(report, indent=2))


def _import_tensorflow_quietly():
    """Imports TensorFlow with stderr muted: on a CPU machine its start-up lines (oneDNN
    notes, "could not find cuda drivers") come from C++ before any log level applies, and
    would bury the one line a user needs. Import errors still surface as exceptions."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # TensorFlow's own INFO lines (collective ops of multi-worker runs, asset writing) drown
    # the project's progress lines.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    args = _parser().parse_args(argv)
    if args.command not in ("make-shapes", "make-figures"):
        _import_tensorflow_quietly()
    from mask_rcnn_tf.errors import USER_ERRORS

    user_errors = USER_ERRORS
    if args.command in ("serve", "client"):
        from mask_rcnn_tf.serving.errors import ServingError

        user_errors += (ServingError,)
    try:
        run(args)
    except user_errors as err:
        if os.environ.get("MASK_RCNN_DEBUG"):
            raise
        print(f"mask-rcnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
