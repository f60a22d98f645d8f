"""The `mask-rcnn` command: parses arguments and calls one package function per sub-command.

Errors the user can fix (bad config, bad data, missing files) end in one line on stderr and
exit status 2; TensorFlow is imported only by the sub-commands that need it.
"""

import argparse
import json
import logging
import os
import sys


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

    train = commands.add_parser("train", help="train with model.fit (resumes in --model-dir)")
    _add_config_args(train)

    evaluate = commands.add_parser("evaluate", help="COCO bbox and segm AP on data.val")
    _add_config_args(evaluate, weights=True)
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")

    predict = commands.add_parser("predict", help="draw detections on images")
    _add_config_args(predict, weights=True)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--output-dir", required=True)
    return parser


def _config(args):
    from mask_rcnn_tf.config import load_config

    return load_config(args.config, args.overrides)


def _load_model(args, config):
    from mask_rcnn_tf.modeling.factory import build_model
    from mask_rcnn_tf.training.checkpoints import load_model_weights

    model = build_model(config.model, image_size=config.data.pad_size)
    load_model_weights(model, model_dir=args.model_dir, weights=args.weights)
    return model


def run(args):
    if args.command == "make-shapes":
        from mask_rcnn_tf.data.shapes import make_shapes

        summary = make_shapes(args.output, args.num_images, args.seed,
                              image_size=args.image_size, overwrite=args.overwrite)
        print(json.dumps(summary))
    elif args.command == "train":
        from mask_rcnn_tf.training.train import train

        train(_config(args), args.model_dir)
    elif args.command == "evaluate":
        from mask_rcnn_tf.data.inputs import load_split
        from mask_rcnn_tf.evaluation.evaluate import evaluate_model
        from mask_rcnn_tf.io_utils import atomic_write_json

        config = _config(args)
        dataset = load_split(config.data, "val")
        metrics = evaluate_model(_load_model(args, config), config.data, dataset,
                                 batch_size=config.eval.batch_size,
                                 mask_threshold=config.eval.mask_threshold)
        print(json.dumps(metrics, indent=2))
        if args.output:
            atomic_write_json(args.output, metrics)
    elif args.command == "predict":
        from mask_rcnn_tf.data.inputs import load_categories
        from mask_rcnn_tf.evaluation.predict import predict_images, read_image

        config = _config(args)
        categories = load_categories(config.data)
        images = {path: read_image(path) for path in args.images}
        predict_images(_load_model(args, config), config, images, args.output_dir, categories)


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
    args = _parser().parse_args(argv)
    if args.command != "make-shapes":
        _import_tensorflow_quietly()
    from mask_rcnn_tf.errors import USER_ERRORS

    try:
        run(args)
    except USER_ERRORS as err:
        if os.environ.get("MASK_RCNN_DEBUG"):
            raise
        print(f"mask-rcnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
