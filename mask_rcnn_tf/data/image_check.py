"""Checks image files against an annotations file, in parallel, before anything trains on them.

Two depths: a header check (the file opens as an image whose width and height match the
annotations file; PIL reads only the first kilobytes, so it costs about a file open) and a full
decode (every pixel, as training will; what `make-tfrecords` does once before writing shards).
Every bad image is reported, not only the first, with its path and the reason.

Paths with a scheme (`gs://bucket/...`) are read through tf.io.gfile; local paths with open().
"""

import concurrent.futures
import multiprocessing
import os

from PIL import Image, UnidentifiedImageError

# Images per task handed to a worker: large enough that scheduling costs nothing, small enough
# that the progress line moves.
_CHUNK = 64


def open_file(path):
    """A binary file object: open() for local paths, tf.io.gfile for URLs (gs://, s3://, ...)."""
    if "://" in path:
        import tensorflow as tf  # only for bucket paths; the worker processes stay light

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def is_file(path):
    """os.path.isfile, also for tf.io.gfile URLs."""
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)
    return os.path.isfile(path)


def check_image(path, height, width, full_decode=False):
    """Why one image is unusable, or None if it is fine.

    Args:
        path: str, local path or a tf.io.gfile URL.
        height, width: int, the size the annotations file gives.
        full_decode: decode every pixel (catches truncated or corrupt data) instead of reading
            only the header (catches missing files, unknown formats and wrong sizes).

    Returns:
        None, or a one-line reason ("image file not found", "image does not decode (...)",
        "image is 480x640 (h x w) but the annotations file says 640x480").
    """
    try:
        with open_file(path) as f, Image.open(f) as image:
            size = image.size
            if full_decode:
                image.load()
            else:
                # Reads the chunks without decompressing them (PNG: checksums; JPEG: nothing).
                image.verify()
    except FileNotFoundError:
        return "image file not found"
    except UnidentifiedImageError:  # its message holds the repr of the file object
        return "image does not decode (not an image format PIL reads)"
    except Exception as err:  # PIL raises many types for broken files; all mean the same here.
        if "://" not in path and not os.path.exists(path):
            return "image file not found"
        return f"image does not decode ({err})"
    if size != (width, height):
        return (f"image is {size[1]}x{size[0]} (h x w) but the annotations file says "
                f"{height}x{width}")
    return None


def _check_chunk(items, full_decode):
    return [(path, reason) for path, height, width in items
            if (reason := check_image(path, height, width, full_decode)) is not None]


def check_images(items, *, full_decode=False, workers=None, progress=None):
    """Checks many images in parallel; returns every bad one.

    Header checks run in threads (they wait on the disk, and a training process must not
    fork after TensorFlow started its threads); full decodes run in spawned processes (they
    need the CPUs).

    Args:
        items: sequence of (path, height, width).
        full_decode: see check_image.
        workers: parallel threads or processes; None: the number of CPUs (threads: 4x that).
        progress: optional mask_rcnn_tf.progress.Progress, advanced as chunks complete.

    Returns:
        list of (path, reason) in the order of `items`, empty when all are fine.
    """
    items = list(items)
    chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    cpus = os.cpu_count() or 1
    if full_decode:
        executor = concurrent.futures.ProcessPoolExecutor(
            workers or cpus, mp_context=multiprocessing.get_context("spawn"))
    else:
        executor = concurrent.futures.ThreadPoolExecutor(workers or 4 * cpus)
    bad = {}
    with executor:
        futures = {executor.submit(_check_chunk, chunk, full_decode): i
                   for i, chunk in enumerate(chunks)}
        for future in concurrent.futures.as_completed(futures):
            bad[futures[future]] = future.result()
            if progress is not None:
                progress.update(len(chunks[futures[future]]))
    return [entry for i in sorted(bad) for entry in bad[i]]


def bad_images_error(bad, source, also=None, limit=20):
    """An error listing bad images (the first `limit`, and how many more) on one line each.

    Args:
        bad: list of (path, reason) from check_images.
        source: what listed them (the annotations file), named in the first line.
        also: another problem found in the same pass, appended as a last line.

    Returns:
        FileNotFoundError when every image is missing (and nothing else is wrong), else
        ValueError.
    """
    if len(bad) == 1 and not also:  # the common case stays one line
        path, reason = bad[0]
        error = FileNotFoundError if reason == "image file not found" else ValueError
        return error(f"{path}: {reason} (listed in {source})")
    lines = [f"{path}: {reason}" for path, reason in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    if also:
        lines.append(also)
    missing = also is None and all(reason == "image file not found" for _, reason in bad)
    return (FileNotFoundError if missing else ValueError)(
        f"{source}: {len(bad)} bad image(s):\n" + "\n".join(lines))
