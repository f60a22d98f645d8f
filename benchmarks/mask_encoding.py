"""How to store instance masks in the TFRecord shards: size and decode time of three encodings.

For every instance of a dataset (default: a fresh shapes dataset; --annotations/--images for
any COCO-format data) measures

  runs  uncompressed COCO RLE run lengths as a tf.train.Int64List (protobuf varints), decoded
        for all instances of an image at once by data/pipeline.py's decode_rle_masks;
  rle   COCO's compressed RLE string (pycocotools), decoded by pycocotools (NumPy, outside
        the graph: TensorFlow has no op for it);
  png   one 1-bit PNG per instance (PIL, optimize), decoded by tf.io.decode_png per instance;

prints bytes per instance and decode milliseconds per image (median of --rounds passes, one
image at a time; the TensorFlow decoders as tf.functions) as JSON.
data/tfrecords.py says which one the shards use and why.

    python benchmarks/mask_encoding.py                       # 200 shapes images, 128 px
    python benchmarks/mask_encoding.py --num-images 50 --image-size 640
"""

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--annotations")
    parser.add_argument("--images")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf
    from PIL import Image
    from pycocotools import mask as mask_utils

    from mask_rcnn_tf.data.coco import load_coco
    from mask_rcnn_tf.data.pipeline import decode_rle_masks
    from mask_rcnn_tf.data.shapes import make_shapes

    if args.annotations:
        dataset = load_coco(args.annotations, args.images)
    else:
        folder = os.path.join(tempfile.mkdtemp(), "shapes")
        make_shapes(folder, args.num_images, seed=0, image_size=args.image_size)
        dataset = load_coco(os.path.join(folder, "annotations.json"),
                            os.path.join(folder, "images"))
    records = [r for r in dataset.records if len(r.classes)]
    sizes = {"runs": 0, "rle": 0, "png": 0}
    encoded = []
    for record in records:
        runs = tf.RaggedTensor.from_row_lengths(
            np.concatenate(record.mask_counts).astype(np.int32),
            np.array([len(c) for c in record.mask_counts], np.int64))
        masks = decode_rle_masks(runs, record.height, record.width).numpy()
        sizes["runs"] += len(tf.train.Int64List(
            value=np.concatenate(record.mask_counts).tolist()).SerializeToString())
        sizes["runs"] += len(tf.train.Int64List(
            value=[len(c) for c in record.mask_counts]).SerializeToString())
        rles, pngs = [], []
        for mask in masks:
            rle = mask_utils.encode(np.asfortranarray(mask))
            rles.append(rle)
            sizes["rle"] += len(rle["counts"])
            buffer = io.BytesIO()
            Image.fromarray(mask.astype(bool)).save(buffer, format="PNG", optimize=True)
            pngs.append(buffer.getvalue())
            sizes["png"] += len(pngs[-1])
        encoded.append((runs, record.height, record.width, rles, pngs))
    instances = sum(len(r.classes) for r in records)

    # The TensorFlow decoders run as graphs, as they do inside the pipeline's Dataset.map.
    runs_graph = tf.function(decode_rle_masks, input_signature=[
        tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
        tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
    png_graph = tf.function(
        lambda pngs: tf.map_fn(lambda p: tf.io.decode_png(p)[..., 0], pngs,
                               fn_output_signature=tf.uint8),
        input_signature=[tf.TensorSpec([None], tf.string)])
    decoders = {
        "runs": lambda runs, h, w, rles, pngs: runs_graph(runs, h, w),
        "rle": lambda runs, h, w, rles, pngs: mask_utils.decode(rles),
        "png": lambda runs, h, w, rles, pngs: png_graph(tf.constant(pngs)),
    }
    times = {}
    for name, decode in decoders.items():
        rounds = []
        for _ in range(args.rounds):
            tick = time.perf_counter()
            for item in encoded:
                decode(*item)
            rounds.append((time.perf_counter() - tick) / len(encoded) * 1000)
        times[name] = statistics.median(rounds)
    print(json.dumps({
        "images": len(records), "instances": instances,
        "bytes_per_instance": {k: v / instances for k, v in sizes.items()},
        "decode_ms_per_image": times,
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
