"""COCO as sharded TFRecords: the tf.train.Example format, its parser, and the streaming source.

`mask-rcnn make-tfrecords` (data/make_tfrecords.py) writes `PREFIX-00000-of-000NN.tfrecord`
shards and `PREFIX.manifest.json`; `data.train.tfrecords: "PREFIX-*"` reads them back through
`TFRecordSource`, which the input pipeline (data/pipeline.py) consumes like a loaded
annotations file: `decode` yields the same per-image record as decode_json_record, so every
step after it (crop masks, resize, flip, pad) is shared.

One Example per image, n instances (crowd regions included, flagged), Kp keypoints:

    image/encoded       bytes          the image file, unchanged (JPEG stays JPEG)
    image/filename      bytes          its path when converted (named in errors)
    image/id            int64          COCO image id
    image/height, width int64          size from the annotations file (checked at decode)
    object/id           int64 [n]      COCO annotation ids
    object/bbox         float [n * 4]  [y1, x1, y2, x2] pixels, clipped to the image
    object/class        int64 [n]      contiguous class 1..K (categories sorted by id)
    object/is_crowd     int64 [n]      1 for crowd regions (dropped when training)
    object/mask_runs    int64 [sum R]  each instance's uncompressed COCO RLE run lengths
    object/mask_num_runs int64 [n]     R of each instance
    object/keypoints    float [n*Kp*3] (x, y, v), continuous pixels, when the data has them

Masks as run lengths rather than PNG or COCO's compressed RLE string. benchmarks/mask_encoding.py
measures the three: on the shapes data 81 bytes per instance as varint runs, 84 as COCO's
string, 205 as 1-bit PNGs; on COCO-like polygons at 640 x 480 (benchmarks/coco_scale.py's data)
309, 259 and 464. So runs cost about what the compressed string costs (within 20%, against
images of ~160 kB each) and well under PNGs. Decoding runs is the pipeline's existing TensorFlow
op (decode_rle_masks: one scatter and one cumsum for all instances of an image, inside the
graph), which gives bit-identical masks to the annotations + images path; the compressed
string would need a decoder TensorFlow does not have (a py_function, which holds the GIL and
does not run on a tf.data service), and PNGs need one decode per instance. Decode times:
run the benchmark on a quiet machine (benchmarks/README.md).
"""

import json
import os
import re

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.data.coco import LabelSchema
from mask_rcnn_tf.data.pipeline import decode_image_of_size, decode_rle_masks

MANIFEST_SUFFIX = ".manifest.json"
_SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.tfrecord$")

# Interleave reads this many shards at once: enough to mix images from several files before
# the shuffle buffer, few enough that each reader's buffer stays small.
_CYCLE_LENGTH = 8


def shard_name(prefix, index, count):
    """`PREFIX-00003-of-00016.tfrecord`."""
    return f"{prefix}-{index:05d}-of-{count:05d}.tfrecord"


def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _float(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def encode_example(encoded_image, path, image_id, height, width, instances):
    """Serializes one image and its instances.

    Args:
        encoded_image: bytes of the image file.
        path: str, the file's path (kept for error messages).
        image_id, height, width: int.
        instances: dict of "ids" int64 [n], "boxes" float32 [n, 4] yxyx pixels, "classes"
            [n], "is_crowd" [n], "mask_counts" n int arrays [R], "keypoints" float32 [n, Kp, 3].

    Returns:
        bytes, a serialized tf.train.Example.
    """
    counts = instances["mask_counts"]
    feature = {
        "image/encoded": _bytes([encoded_image]),
        "image/filename": _bytes([path.encode("utf-8")]),
        "image/id": _int64([image_id]),
        "image/height": _int64([height]),
        "image/width": _int64([width]),
        "object/id": _int64(np.asarray(instances["ids"], np.int64).tolist()),
        "object/bbox": _float(np.asarray(instances["boxes"], np.float32).reshape(-1).tolist()),
        "object/class": _int64(np.asarray(instances["classes"], np.int64).tolist()),
        "object/is_crowd": _int64(np.asarray(instances["is_crowd"], np.int64).tolist()),
        "object/mask_runs": _int64(np.concatenate(
            [np.zeros([0], np.int64)] + [np.asarray(c, np.int64) for c in counts]).tolist()),
        "object/mask_num_runs": _int64([len(c) for c in counts]),
        "object/keypoints": _float(
            np.asarray(instances["keypoints"], np.float32).reshape(-1).tolist()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "object/id": tf.io.VarLenFeature(tf.int64),
    "object/bbox": tf.io.VarLenFeature(tf.float32),
    "object/class": tf.io.VarLenFeature(tf.int64),
    "object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "object/mask_runs": tf.io.VarLenFeature(tf.int64),
    "object/mask_num_runs": tf.io.VarLenFeature(tf.int64),
    "object/keypoints": tf.io.VarLenFeature(tf.float32),
}


def parse_example(serialized, num_keypoints, max_instances):
    """Parses one serialized Example into the decoded record of data/pipeline.py.

    Crowd regions are dropped; of the rest the first `max_instances` are kept (file order, as
    the annotations + images path keeps them).

    Args:
        serialized: string scalar.
        num_keypoints: Kp, 0 for a dataset without keypoints.
        max_instances: int.

    Returns:
        dict of "image" uint8 [h, w, 3], "image_id" int64, "annotation_ids" int64 [n], "boxes"
        float32 [n, 4], "classes" int32 [n], "masks" uint8 [n, h, w] and, when Kp > 0,
        "keypoints" float32 [n, Kp, 3].
    """
    features = tf.io.parse_single_example(serialized, _FEATURES)
    dense = {key: tf.sparse.to_dense(value) for key, value in features.items()
             if isinstance(value, tf.sparse.SparseTensor)}
    keep = tf.where(tf.equal(dense["object/is_crowd"], 0))[:max_instances, 0]
    size = tf.cast(tf.stack([features["image/height"], features["image/width"]]), tf.int32)
    name = features["image/filename"]
    image = decode_image_of_size(features["image/encoded"], name, size, "the shard's")
    runs = tf.RaggedTensor.from_row_lengths(dense["object/mask_runs"],
                                            dense["object/mask_num_runs"])
    masks = decode_rle_masks(tf.cast(tf.gather(runs, keep), tf.int32), size[0], size[1])
    record = {
        "image": image,
        "image_id": features["image/id"],
        "annotation_ids": tf.gather(dense["object/id"], keep),
        "boxes": tf.gather(tf.reshape(dense["object/bbox"], [-1, 4]), keep),
        "classes": tf.cast(tf.gather(dense["object/class"], keep), tf.int32),
        "masks": masks,
    }
    if num_keypoints:
        keypoints = tf.reshape(dense["object/keypoints"], [-1, num_keypoints, 3])
        record["keypoints"] = tf.gather(keypoints, keep)
    return record


def read_manifest(path):
    """The manifest JSON written beside the shards (ValueError naming the file if unreadable)."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: shard manifest not found (it is written by "
                                f"`mask-rcnn make-tfrecords` next to the shards)")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            manifest = json.load(f)
        manifest["shards"], manifest["categories"]  # noqa: B018 (presence check)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a shard manifest ({err})") from None
    return manifest


class TFRecordSource:
    """Shards of one make-tfrecords run, as a record source for data/pipeline.py.

    Attributes:
        files: list of shard paths this source reads (one worker's share after `shard`).
        coco: pycocotools COCO of the ground truth, for evaluation (see with_ground_truth);
            None for training.
        manifest: the parsed manifest; manifest_path: where it was read.
        num_images: images in `files`.
        keypoint_names, skeleton, categories: the dataset's label schema.
        annotations_path: the manifest path (what error messages name as the data's source).
    """

    def __init__(self, files, manifest, manifest_path, coco=None):
        self.files = list(files)
        self.coco = coco
        self.manifest = manifest
        self.manifest_path = self.annotations_path = manifest_path
        counts = {entry["file"]: entry["num_images"] for entry in manifest["shards"]}
        self.num_images = sum(counts[os.path.basename(f)] for f in self.files)
        self.categories = [tuple(c) for c in manifest["categories"]]
        self.keypoint_names = tuple(manifest.get("keypoint_names", ()))
        self.skeleton = tuple(tuple(limb) for limb in manifest.get("skeleton", ()))

    @property
    def label_schema(self):
        return LabelSchema(annotations_path=self.manifest_path, categories=self.categories,
                           keypoint_names=self.keypoint_names, skeleton=self.skeleton)

    def with_ground_truth(self, coco, categories, annotations_path):
        """This source with the ground truth of `annotations_path` for evaluation.

        Raises:
            ValueError: the annotations file's categories differ from the shards'.
        """
        if [tuple(c) for c in categories] != self.categories:
            raise ValueError(f"{annotations_path}: categories differ from those of "
                             f"{self.manifest_path}; the shards were written from another file")
        return TFRecordSource(self.files, self.manifest, self.manifest_path, coco)

    def shard(self, index, count):
        """The source of input pipeline `index` of `count`: files[index::count].

        Raises:
            ValueError: fewer files than pipelines (some worker would get no data).
        """
        if len(self.files) < count:
            raise ValueError(f"{self.manifest_path}: {len(self.files)} shard files cannot feed "
                             f"{count} input pipelines; rewrite with make-tfrecords "
                             f"--num-shards >= {count}")
        return TFRecordSource(self.files[index::count], self.manifest, self.manifest_path)

    def records(self, *, training, seed=None):
        """Serialized Examples of all files: interleaved, files shuffled when training."""
        files = tf.data.Dataset.from_tensor_slices(self.files)
        if training:
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        return files.interleave(
            tf.data.TFRecordDataset, cycle_length=min(_CYCLE_LENGTH, len(self.files)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=not training or seed is not None)

    def decode(self, serialized, max_instances):
        """See parse_example."""
        return parse_example(serialized, len(self.keypoint_names), max_instances)


def open_tfrecords(pattern):
    """The TFRecordSource of a glob of shards, checked against its manifest.

    Every matched file must be a shard the manifest lists, every listed shard must be present,
    and each must have the byte size the manifest records: a truncated or half-copied shard is
    named here, before training starts.

    Args:
        pattern: glob such as "data/coco-train-*" or "gs://bucket/coco-train-*".

    Raises:
        FileNotFoundError: nothing matches, or the manifest or a shard is missing.
        ValueError: a shard's size differs from the manifest, or the files mix several runs.
    """
    matched = sorted(f for f in tf.io.gfile.glob(pattern) if _SHARD_NAME.search(f))
    if not matched:
        raise FileNotFoundError(f"{pattern}: no *-NNNNN-of-NNNNN.tfrecord shards match")
    prefixes = sorted({_SHARD_NAME.sub("", f) for f in matched})
    if len(prefixes) > 1:
        raise ValueError(f"{pattern}: matches shards of several conversions "
                         f"({', '.join(prefixes)}); make the pattern name one prefix")
    manifest_path = prefixes[0] + MANIFEST_SUFFIX
    manifest = read_manifest(manifest_path)
    folder = os.path.dirname(matched[0])
    present = {os.path.basename(f) for f in matched}
    unlisted = sorted(present - {entry["file"] for entry in manifest["shards"]})
    if unlisted:
        raise ValueError(f"{os.path.join(folder, unlisted[0])}: shard is not listed in "
                         f"{manifest_path} (left from another conversion?)")
    for entry in manifest["shards"]:
        path = os.path.join(folder, entry["file"])
        if entry["file"] not in present:
            raise FileNotFoundError(f"{path}: shard listed in {manifest_path} is missing")
        size = tf.io.gfile.stat(path).length
        if size != entry["bytes"]:
            raise ValueError(f"{path}: shard is {size} bytes, {manifest_path} says "
                             f"{entry['bytes']} (truncated or overwritten); write the shards "
                             f"again with make-tfrecords")
    return TFRecordSource(matched, manifest, manifest_path)
