"""Input failures during training or evaluation as one line naming the file.

A bad image or shard fails inside tf.data, in a graph, and reaches Python as a TensorFlow
error raised from model.fit or from the iterator, with a traceback and, for decode errors, no
file name ("Unknown image file format", "corrupted record at 123"). `naming_input_errors`
turns those into a ValueError naming the file: from the Assert messages of data/pipeline.py and
data/tfrecords.py when present, else by finding the culprit (a full check of the images, or a
read of each shard). Other TensorFlow errors pass through unchanged.
"""

import contextlib
import logging
import re

import tensorflow as tf

from mask_rcnn_tf.data.coco import CocoDataset
from mask_rcnn_tf.data.image_check import check_images

logger = logging.getLogger("mask_rcnn_tf.data")

# Errors of the image decoders and of the Asserts before them.
_DECODE_ERROR = re.compile(r"image file format|JPEG|PNG|GIF|BMP|WebP|decode|image size \(h, w\)",
                           re.IGNORECASE)
_ASSERTION = re.compile(r"assertion failed: (.*)")


def _assertion_line(message):
    """'[a] [b 1 2] [c]' of an Assert error as 'a b 1 2 c', or None."""
    match = _ASSERTION.search(message)
    if not match:
        return None
    return " ".join(part.strip() for part in re.findall(r"\[([^\[\]]*)\]", match.group(1)))


def _first_line(err):
    lines = [line.strip() for line in str(err.message).splitlines() if line.strip()]
    return next((line for line in lines if "Graph execution error" not in line
                 and not line.startswith("Detected at node")), str(err.message)).split(" [[")[0]


def _find_bad_image(source):
    """The first image of a CocoDataset that does not fully decode, as 'path: reason'."""
    # A TFRecordSource has a records() method, not a list of image records: no images to check.
    if not isinstance(source, CocoDataset) or not source.records:
        return None
    records = source.records
    logger.info("an image failed to decode; decoding all %d images to find it", len(records))
    bad = check_images([(r.path, r.height, r.width) for r in records], full_decode=True)
    return f"{bad[0][0]}: {bad[0][1]}" if bad else None


def _find_bad_shard(source):
    """The first shard of a TFRecordSource that does not read to its end, as 'path: reason'."""
    for path in getattr(source, "files", ()):
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.OpError as err:
            return f"{path}: shard does not read ({_first_line(err)})"
    return None


@contextlib.contextmanager
def naming_input_errors(source):
    """Re-raises input failures inside the block as ValueError naming the bad file.

    Args:
        source: the CocoDataset or TFRecordSource the input reads (searched when the error
            itself names no file).
    """
    try:
        yield
    except tf.errors.DataLossError as err:
        found = _find_bad_shard(source)
        raise ValueError(found or f"{getattr(source, 'annotations_path', 'input')}: "
                                  f"{_first_line(err)}") from None
    except tf.errors.InvalidArgumentError as err:
        message = str(err.message)
        if not _DECODE_ERROR.search(message):
            raise
        named = _assertion_line(message)
        if named:
            raise ValueError(named) from None
        found = _find_bad_image(source) or _find_bad_shard(source)
        raise ValueError(found or f"{getattr(source, 'annotations_path', 'input')}: an image "
                                  f"failed to decode ({_first_line(err)})") from None
