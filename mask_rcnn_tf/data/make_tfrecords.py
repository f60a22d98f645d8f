"""`mask-rcnn make-tfrecords`: a COCO-format dataset, checked, as sharded TFRecords + manifest.

The annotations file is read once (data/coco.py, the same validation and the same per-image
records as training from annotations + images), every image is decoded in parallel processes
(data/image_check.py), and only if everything is usable are the shards written: each under a
temporary name, renamed into place when complete, the manifest last. Example format:
data/tfrecords.py.
"""

import hashlib
import json
import logging
import math
import os

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.data.coco import _mask_counts, load_coco
from mask_rcnn_tf.data.tfrecords import MANIFEST_SUFFIX, encode_example, shard_name
from mask_rcnn_tf.io_utils import atomic_write_json
from mask_rcnn_tf.progress import Progress

logger = logging.getLogger("mask_rcnn_tf.data")

# Default images per shard: COCO train (118,287 images, ~160 kB each) gives 116 shards of
# ~165 MB, in the 100-200 MB range tf.data guides recommend, and enough files for 100+ workers.
IMAGES_PER_SHARD = 1024


def _sha256(path):
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(path, manifest):
    """atomic_write_json, or for a tf.io.gfile URL a temporary object renamed into place."""
    if "://" not in path:
        atomic_write_json(path, manifest)
        return
    temp_path = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temp_path, "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(temp_path, path, overwrite=True)


def _crowd_instances(dataset):
    """{image_id: [(annotation_id, box yxyx, class, run lengths)]} of the crowd regions."""
    class_of = {category_id: i + 1 for i, (category_id, _) in enumerate(dataset.categories)}
    images = dataset.coco.imgs
    crowds = {}
    for annotation in dataset.coco.dataset["annotations"]:
        if not annotation.get("iscrowd", 0) or annotation["category_id"] not in class_of:
            continue
        image = images[annotation["image_id"]]
        height, width = image["height"], image["width"]
        x, y, w, h = (float(v) for v in annotation["bbox"])
        counts = _mask_counts(dataset.annotations_path, f"annotation id {annotation['id']}",
                              annotation["segmentation"], height, width)
        box = np.clip([y, x, y + h, x + w], 0, [height, width, height, width])
        crowds.setdefault(annotation["image_id"], []).append(
            (annotation["id"], box, class_of[annotation["category_id"]], counts))
    return crowds


def _instances(record, crowds, num_keypoints):
    """encode_example's instances: the record's, then its image's crowd regions (flagged)."""
    return {
        "ids": list(record.annotation_ids) + [c[0] for c in crowds],
        "boxes": np.concatenate([record.boxes, np.reshape([c[1] for c in crowds], [-1, 4])]),
        "classes": list(record.classes) + [c[2] for c in crowds],
        "is_crowd": [0] * len(record.classes) + [1] * len(crowds),
        "mask_counts": list(record.mask_counts) + [c[3] for c in crowds],
        "keypoints": np.concatenate([record.keypoints,
                                     np.zeros([len(crowds), num_keypoints, 3], np.float32)]),
    }


def make_tfrecords(annotations, images_dir, output_prefix, *, num_shards=None, workers=None,
                   overwrite=False, progress=True):
    """Converts a COCO-format dataset into `output_prefix-NNNNN-of-NNNNN.tfrecord` shards.

    Args:
        annotations: the COCO JSON file.
        images_dir: folder its file_name values are relative to.
        output_prefix: shard path prefix; the folder must exist (local or a tf.io.gfile URL).
        num_shards: number of shards; None: one per IMAGES_PER_SHARD images.
        workers: processes decoding images for the check; None: one per CPU.
        overwrite: replace shards and manifest of an earlier conversion to this prefix.
        progress: show a progress line (images/s, time left) on stderr.

    Returns:
        dict summary: the manifest path, number of shards, images, instances, crowd regions.

    Raises:
        ValueError: bad images (every one listed with its reason, together with the first
            annotation error, if any), bad annotations, or shards already present.
    """
    prefix = os.fspath(output_prefix)
    manifest_path = prefix + MANIFEST_SUFFIX
    folder = os.path.dirname(prefix) or "."
    if not tf.io.gfile.isdir(folder):
        raise FileNotFoundError(f"{folder}: output folder does not exist")
    existing = tf.io.gfile.glob(prefix + "-*-of-*.tfrecord")
    if (existing or tf.io.gfile.exists(manifest_path)) and not overwrite:
        raise ValueError(f"{prefix}: shards of an earlier conversion exist "
                         f"({len(existing)} files); pass --overwrite to replace them")
    for flag, value in (("--num-shards", num_shards), ("--workers", workers)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    # Bad images and the first annotation error are listed before anything is written.
    dataset = load_coco(annotations, images_dir, verify_images="full", workers=workers)
    records = dataset.records
    if num_shards is None:
        num_shards = max(1, math.ceil(len(records) / IMAGES_PER_SHARD))
    if not 1 <= num_shards <= len(records):
        raise ValueError(f"--num-shards must be in 1..{len(records)} (the number of images), "
                         f"got {num_shards}")
    crowds = _crowd_instances(dataset)
    num_keypoints = len(dataset.keypoint_names)
    bar = Progress(len(records), "images", enabled=progress, prefix="writing")
    shards, temp_paths = [], []
    try:
        for index in range(num_shards):
            name = shard_name(os.path.basename(prefix), index, num_shards)
            temp_path = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
            temp_paths.append(temp_path)
            shard_records = records[index::num_shards]
            with tf.io.TFRecordWriter(temp_path) as writer:
                for record in shard_records:
                    with tf.io.gfile.GFile(record.path, "rb") as f:
                        encoded = f.read()
                    writer.write(encode_example(
                        encoded, record.path, record.image_id, record.height, record.width,
                        _instances(record, crowds.get(record.image_id, []), num_keypoints)))
                    bar.update()
            shards.append({"file": name, "num_images": len(shard_records),
                           "bytes": tf.io.gfile.stat(temp_path).length})
        for shard, temp_path in zip(shards, temp_paths):
            tf.io.gfile.rename(temp_path, os.path.join(folder, shard["file"]), overwrite=True)
    finally:
        for temp_path in temp_paths:
            if tf.io.gfile.exists(temp_path):
                tf.io.gfile.remove(temp_path)
    written = {os.path.join(folder, shard["file"]) for shard in shards}
    for stale in existing:
        if stale not in written:
            tf.io.gfile.remove(stale)
    manifest = {
        "format": 1,
        "source": {"annotations": dataset.annotations_path, "sha256": _sha256(annotations),
                   "images": os.fspath(images_dir)},
        "num_images": len(records),
        "num_instances": int(sum(len(r.classes) for r in records)),
        "num_crowd": int(sum(len(c) for c in crowds.values())),
        "categories": [list(c) for c in dataset.categories],
        "keypoint_names": list(dataset.keypoint_names),
        "skeleton": [list(limb) for limb in dataset.skeleton],
        "mask_encoding": "uncompressed COCO RLE run lengths (object/mask_runs)",
        "shards": shards,
    }
    _write_manifest(manifest_path, manifest)
    logger.info("%s: %d images in %d shards", manifest_path, len(records), num_shards)
    return {"manifest": manifest_path, "num_shards": num_shards, "num_images": len(records),
            "num_instances": manifest["num_instances"], "num_crowd": manifest["num_crowd"]}
