"""The tf.data input pipeline: decode, resize, flip, normalize, pad, and crop ground-truth masks.

`build_dataset` yields one `features` dict per batch (model.fit takes it as x; the model's
train_step reads these keys). B is the batch size, M = max_instances, S = mask_crop_size,
H x W the padded size: with per-batch padding (pad_size None) the batch's largest resized
height and width, each rounded up to a multiple of size_divisibility; with a pad_size, P x P:

    "images"          float32 [B, H, W, 3]  (RGB 0..255 - mean) / std; the resized image at the
                                            top-left, zeros (the normalized mean) in the padding
    "image_sizes"     float32 [B, 2]        (h, w) of the resized image inside the padding
    "scales"          float32 [B]           resize factor: resized = original * scale
    "original_sizes"  int32   [B, 2]        (h, w) of the image file
    "image_ids"       int64   [B]           COCO image ids
    "gt_boxes"        float32 [B, M, 4]     [y1, x1, y2, x2], pixels of the resized (and flipped)
                                            image; padding rows zero
    "gt_classes"      int32   [B, M]        contiguous class 1..K; padding rows -1
    "gt_masks"        float32 [B, M, S, S]  each instance mask resampled at the S x S bin centres
                                            of its own gt box (values in [0, 1], threshold at 0.5);
                                            padding rows zero
    "num_gt"          int32   [B]           valid rows of the gt_* tensors
    "gt_keypoints"    float32 [B, M, Kp, 3] only for datasets with keypoints: (x, y, v), x and y
                                            continuous pixels of the resized (and flipped)
                                            image, v = 0 unlabelled, 1 occluded, 2 visible;
                                            padding rows zero

Everything per image runs as TensorFlow ops inside Dataset.map: read and decode the file, decode
the run-length masks, crop them to their boxes at the original resolution (resizing the image
does not change a crop of the box; a flip mirrors it), resize, flip, normalize; then batches
are padded. With per-batch padding, training batches hold only landscape (w > h) or only
portrait-or-square images, as Detectron2's aspect-ratio grouping makes them, so that a batch
pads little.
"""

import functools
import logging

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.ops.keypoint_ops import flip_keypoints
from mask_rcnn_tf.ops.mask_ops import crop_masks

logger = logging.getLogger("mask_rcnn_tf.data")

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _record_tensors(records, max_instances):
    """Packs image records into tensors for Dataset.from_tensor_slices.

    Args:
        records: list of ImageRecord (see data/coco.py).
        max_instances: instances kept per image, the first ones in file order.

    Returns:
        dict of "path" string [N], "image_id" int64 [N], "size" int32 [N, 2] (h, w), "boxes"
        ragged float32 [N, (n), 4], "classes" ragged int32 [N, (n)], "mask_counts" ragged int32
        [N, (n), (R)] (uncompressed COCO RLE run lengths per instance) and, for datasets with
        keypoints, "keypoints" ragged float32 [N, (n), Kp, 3].
    """
    kept = [min(len(r.classes), max_instances) for r in records]
    num_truncated = sum(len(r.classes) > max_instances for r in records)
    if num_truncated:
        logger.info("%d images have more than max_instances=%d instances; keeping the first %d "
                    "of each", num_truncated, max_instances, max_instances)
    counts = [c for r, n in zip(records, kept) for c in r.mask_counts[:n]]
    flat_counts = np.concatenate(counts) if counts else np.zeros([0], np.int32)
    boxes = [r.boxes[:n] for r, n in zip(records, kept)]
    classes = [r.classes[:n] for r, n in zip(records, kept)]
    keypoints = [r.keypoints[:n] for r, n in zip(records, kept)]
    kept = np.array(kept, np.int64)
    tensors = {
        "path": tf.constant([r.path for r in records]),
        "image_id": tf.constant([r.image_id for r in records], tf.int64),
        "size": tf.constant([[r.height, r.width] for r in records], tf.int32),
        "boxes": tf.RaggedTensor.from_row_lengths(
            np.concatenate(boxes).astype(np.float32).reshape(-1, 4), kept),
        "classes": tf.RaggedTensor.from_row_lengths(
            np.concatenate(classes).astype(np.int32), kept),
        "mask_counts": tf.RaggedTensor.from_nested_row_lengths(
            flat_counts.astype(np.int32), [kept, np.array([len(c) for c in counts], np.int64)]),
    }
    num_keypoints = records[0].keypoints.shape[1]
    if num_keypoints:
        tensors["keypoints"] = tf.RaggedTensor.from_row_lengths(
            np.concatenate(keypoints).astype(np.float32).reshape(-1, num_keypoints, 3), kept)
    return tensors


def decode_rle_masks(counts, height, width):
    """Decodes uncompressed COCO run-length counts into full masks.

    Each 1-run [start, end) adds +1 at its start and -1 at its end in one flat buffer over all
    masks; a cumulative sum then gives the mask. This needs O(n h w) memory, unlike tf.repeat
    of the run values, whose internal [runs, longest run] mask can be far larger.

    Args:
        counts: int32 RaggedTensor [n, (R)]: per mask, run lengths over the column-major
            flattened [height, width] mask, alternating 0-runs and 1-runs starting with 0-runs;
            each row sums to height * width.
        height: int32 scalar.
        width: int32 scalar.

    Returns:
        uint8 [n, height, width], values 0 / 1.
    """
    num_masks = counts.nrows(out_type=tf.int64)
    mask_size = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
    runs = tf.cast(counts.flat_values, tf.int64)
    row_ids = counts.value_rowids()
    # Rows sum to mask_size, so a running sum over all rows lands each run at its position in
    # the flat [n * h * w] buffer.
    ends = tf.cumsum(runs)
    run_index = tf.range(tf.size(runs, out_type=tf.int64)) - tf.gather(counts.row_starts(), row_ids)
    is_one = tf.math.equal(run_index % 2, 1)
    ones_ends = tf.boolean_mask(ends, is_one)
    ones_starts = ones_ends - tf.boolean_mask(runs, is_one)
    edges = tf.scatter_nd(
        tf.concat([ones_starts, ones_ends], 0)[:, None],
        tf.concat([tf.ones_like(ones_starts, tf.int8), -tf.ones_like(ones_ends, tf.int8)], 0),
        [num_masks * mask_size + 1])
    flat = tf.cast(tf.cumsum(edges[:-1]), tf.uint8)
    return tf.transpose(tf.reshape(flat, tf.stack([num_masks, tf.cast(width, tf.int64),
                                                   tf.cast(height, tf.int64)])), [0, 2, 1])


def resize_scale(height, width, min_size, max_size):
    """Resize factor of torchvision's GeneralizedRCNNTransform.

    Args:
        height, width: float32 scalars, original image size.
        min_size: target short side.
        max_size: cap on the long side.

    Returns:
        float32 scalar min(min_size / min(h, w), max_size / max(h, w)).
    """
    return tf.minimum(min_size / tf.minimum(height, width), max_size / tf.maximum(height, width))


def preprocess_image(image, *, min_size, max_size, pad_size=None, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, channel_order="rgb"):
    """Resizes, normalizes and (with pad_size) pads one image as the model expects it.

    Args:
        image: uint8 or float [h, w, 3] RGB, 0..255.
        min_size, max_size: resize targets (see resize_scale); pad_size: side of the square
            output, or None to leave the padding to the batch (pad_to_multiple).
        mean, std: per channel, in `channel_order`, 0..255 scale.
        channel_order: "rgb", or "bgr" to reverse the channels before normalizing (Caffe-style
            weights, e.g. Keras Applications' ResNet50).

    Returns:
        (image float32 normalized, [pad_size, pad_size, 3] with the resized image at the
        top-left, or the resized image itself [h', w', 3] when pad_size is None;
        resized_size int32 [2] (h', w'); scale float32 scalar, resized = original * scale).
    """
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_scale(size[0], size[1], float(min_size), float(max_size))
    resized_size = tf.cast(tf.round(size * scale), tf.int32)
    image = tf.image.resize(tf.cast(image, tf.float32), resized_size, method="bilinear",
                            antialias=False)
    if channel_order == "bgr":
        image = image[..., ::-1]
    image = (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    if pad_size is not None:
        image = tf.image.pad_to_bounding_box(image, 0, 0, pad_size, pad_size)
        image.set_shape([pad_size, pad_size, 3])
    return image, resized_size, scale


def padded_size(sizes, size_divisibility):
    """The padded input size of a batch: its largest height and width, rounded up.

    Args:
        sizes: int32 [B, 2], (h, w) of the resized images.
        size_divisibility: Python int, a multiple of the largest feature stride.

    Returns:
        int32 [2], (H, W).
    """
    largest = tf.reduce_max(sizes, axis=0)
    return (largest + size_divisibility - 1) // size_divisibility * size_divisibility


def pad_to_multiple(images, size_divisibility):
    """Zero-pads a batch bottom and right to padded_size of its own size.

    Args:
        images: float32 [B, h, w, 3], the batch padded to its largest image.
        size_divisibility: Python int.

    Returns:
        float32 [B, H, W, 3], H and W multiples of size_divisibility.
    """
    shape = tf.shape(images)
    target = padded_size(shape[None, 1:3], size_divisibility)
    return tf.pad(images, [[0, 0], [0, target[0] - shape[1]], [0, target[1] - shape[2]], [0, 0]])


def _flip(image, resized_width, targets, keypoint_flip_map):
    """Mirrors left-right the resized image (inside the padded input [P, P, 3], if padded) and
    its targets:
    boxes [n, 4] yxyx pixels, mask crops [n, S, S] and, if present, keypoints [n, Kp, 3]."""
    width = tf.cast(resized_width, tf.float32)
    y1, x1, y2, x2 = tf.unstack(targets["boxes"], axis=-1)
    flipped = dict(targets, boxes=tf.stack([y1, width - x2, y2, width - x1], axis=-1),
                   mask_crops=targets["mask_crops"][:, :, ::-1])
    if "keypoints" in targets:
        flipped["keypoints"] = flip_keypoints(targets["keypoints"], width, keypoint_flip_map)
    return (tf.reverse_sequence(image[None], [resized_width], seq_axis=2, batch_axis=0)[0],
            flipped)


def _pad_rows(tensor, max_instances, value):
    paddings = [[0, max_instances - tf.shape(tensor)[0]]] + [[0, 0]] * (tensor.shape.rank - 1)
    padded = tf.pad(tensor, paddings, constant_values=value)
    padded.set_shape([max_instances] + tensor.shape[1:].as_list())
    return padded


# First bytes of the formats tf.io.decode_image reads (WebP: "RIFF" then "WEBP" at byte 8).
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF")


def decode_image_named(data, name):
    """tf.io.decode_image whose failure on a non-image names the file.

    decode_image's own error ("Unknown image file format") names no file; an Assert on the
    format signature first puts `name` into the error (data/input_errors.py turns it into one
    line).

    Args:
        data: string scalar, the encoded file.
        name: string scalar, the file's path, for the error.

    Returns:
        uint8 [h, w, 3] RGB.
    """
    head = tf.strings.substr(data, 0, 4)
    known = tf.reduce_any([tf.strings.substr(head, 0, len(s)) == s for s in _IMAGE_SIGNATURES])
    check = tf.debugging.Assert(known, [name, "is not a JPEG, PNG, GIF, BMP or WebP image"])
    with tf.control_dependencies([check]):
        return tf.io.decode_image(data, channels=3, expand_animations=False)


def decode_image_of_size(data, name, size, source):
    """decode_image_named, checked against the size its annotations give.

    Args:
        data, name: as decode_image_named.
        size: int32 [2], (h, w) the annotations give.
        source: str naming where `size` came from, for the error.

    Returns:
        uint8 [h, w, 3] RGB; running it fails naming the file if the decoded size differs
        (annotations read against the wrong images would otherwise train on misplaced masks).
    """
    image = decode_image_named(data, name)
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(image)[:2], size)),
        [name, "image size (h, w)", tf.shape(image)[:2], f"differs from {source}", size])
    with tf.control_dependencies([check]):
        return tf.identity(image)


def decode_json_record(record):
    """Reads and decodes one record of `_record_tensors` (the annotations + images path).

    Returns:
        the decoded record every source yields: "image" uint8 [h, w, 3], "image_id" int64,
        "boxes" float32 [n, 4] yxyx original pixels, "classes" int32 [n], "masks" uint8
        [n, h, w] full-image masks and, with keypoints, "keypoints" float32 [n, Kp, 3].
    """
    image = decode_image_of_size(tf.io.read_file(record["path"]), record["path"], record["size"],
                                 "height, width in the annotations file")
    masks = decode_rle_masks(record["mask_counts"], record["size"][0], record["size"][1])
    decoded = {key: record[key] for key in ("image_id", "boxes", "classes", "keypoints")
               if key in record}
    return dict(decoded, image=image, masks=masks)


def _make_example_fn(*, training, min_size, max_size, pad_size, max_instances, mask_crop_size,
                     flip_probability, mean, std, keypoint_flip_map, channel_order="rgb",
                     decode=decode_json_record):
    def example(record, flip_seed=None):
        record = decode(record)
        image, masks = record["image"], record["masks"]
        original_size = tf.shape(image)[:2]
        boxes = tf.reshape(record["boxes"], [-1, 4])
        targets = {"boxes": boxes, "mask_crops": crop_masks(masks, boxes, mask_crop_size)}

        image, resized_size, scale = preprocess_image(
            image, min_size=min_size, max_size=max_size, pad_size=pad_size, mean=mean, std=std,
            channel_order=channel_order)
        targets["boxes"] = boxes * scale
        if "keypoints" in record:
            keypoints = record["keypoints"]
            targets["keypoints"] = tf.concat([keypoints[..., :2] * scale, keypoints[..., 2:]], -1)
        if training:
            flip = tf.random.stateless_uniform([], seed=tf.stack([flip_seed, 0])) < flip_probability
            image, targets = tf.cond(
                flip, lambda: _flip(image, resized_size[1], targets, keypoint_flip_map),
                lambda: (image, targets))
        boxes = targets["boxes"]
        features = {
            "images": image,
            "image_sizes": tf.cast(resized_size, tf.float32),
            "scales": scale,
            "original_sizes": original_size,
            "image_ids": record["image_id"],
            "gt_boxes": _pad_rows(boxes, max_instances, 0.0),
            "gt_classes": _pad_rows(record["classes"], max_instances, -1),
            "gt_masks": _pad_rows(targets["mask_crops"], max_instances, 0.0),
            "num_gt": tf.shape(boxes)[0],
        }
        if "keypoints" in targets:
            features["gt_keypoints"] = _pad_rows(targets["keypoints"], max_instances, 0.0)
        return features

    return example


def _record_source(dataset, max_instances, training, seed):
    """The per-image records of `dataset` and the function decoding one.

    `dataset` is a CocoDataset (records packed as constants, decode_json_record) or a streaming
    source such as data/tfrecords.py's TFRecordSource, which provides `num_images`,
    `records(training=, seed=)` (a tf.data.Dataset, files shuffled when training) and
    `decode(record, max_instances)` yielding what decode_json_record yields.
    """
    if hasattr(dataset, "decode"):
        return (dataset.records(training=training, seed=seed),
                functools.partial(dataset.decode, max_instances=max_instances))
    return (tf.data.Dataset.from_tensor_slices(_record_tensors(dataset.records, max_instances)),
            decode_json_record)


def _check_arguments(dataset, batch_size, min_size, max_size, pad_size, max_instances,
                     mask_crop_size, flip_probability, mean, std, shuffle_buffer,
                     size_divisibility):
    if not dataset.num_images:
        raise ValueError(f"{dataset.annotations_path}: dataset has no images")
    for name, value in (("batch_size", batch_size), ("max_instances", max_instances),
                        ("mask_crop_size", mask_crop_size), ("shuffle_buffer", shuffle_buffer),
                        ("pad_size", 1 if pad_size is None else pad_size),
                        ("size_divisibility", size_divisibility)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (min_size > 0 and max_size > 0):
        raise ValueError(f"min_size and max_size must be positive, got {min_size!r}, {max_size!r}")
    if size_divisibility % 32:
        raise ValueError(f"size_divisibility must be a multiple of 32, got {size_divisibility}")
    if pad_size is not None and (pad_size % 32 or pad_size < max_size):
        raise ValueError(f"pad_size must be a multiple of 32 and >= max_size={max_size}, "
                         f"got {pad_size}")
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability!r}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 values, std positive; got {mean!r}, {std!r}")


def build_dataset(dataset, *, training, batch_size, min_size, max_size, pad_size, max_instances,
                  mask_crop_size, flip_probability=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  shuffle_buffer=1024, seed=None, repeat=None, keypoint_flip_map=None,
                  channel_order="rgb", size_divisibility=32):
    """Builds the batched input pipeline over a loaded COCO dataset.

    Training: shuffle, repeat, random horizontal flip, batches of exactly batch_size (with
    per-batch padding, of one orientation each: an image waits for batch_size - 1 others of
    its orientation, in order). Evaluation: file order, no flip, every image once, the last
    partial batch kept. Images with more than
    max_instances instances keep the first max_instances (one log line). The resized size is
    round(original * scale); boxes are scaled by `scale` itself, so they can differ from the
    resampled content by under half a pixel.

    Args:
        dataset: CocoDataset from data/coco.py, or a streaming record source (TFRecordSource
            from data/tfrecords.py; see _record_source).
        training: training or evaluation behaviour, as above.
        batch_size: images per batch.
        min_size: target short side of the resized image, pixels.
        max_size: cap on the long side of the resized image, pixels.
        pad_size: side of the padded square input, a multiple of 32 >= max_size; None: pad
            each batch to its largest image, rounded up to a multiple of size_divisibility.
        max_instances: ground-truth rows per image.
        mask_crop_size: side S of the stored mask crops.
        flip_probability: probability of a horizontal flip when training.
        mean: per-channel RGB mean on the 0..255 scale.
        std: per-channel RGB standard deviation on the 0..255 scale.
        shuffle_buffer: shuffle buffer size (capped at the number of images).
        seed: seeds shuffling and flips, making the order reproducible; None: nondeterministic.
        repeat: repeat forever (True) or stop after one pass (False); None: repeat when training.
        keypoint_flip_map: for datasets with keypoints, the index each keypoint takes under a
            horizontal flip (left and right swap); required when training with flips.
        channel_order: "rgb" or "bgr" (see preprocess_image); mean and std are in this order.
        size_divisibility: multiple of 32 the per-batch padded sides are rounded up to.

    Returns:
        tf.data.Dataset of feature dicts, keys and shapes as in this module's docstring.
    """
    _check_arguments(dataset, batch_size, min_size, max_size, pad_size, max_instances,
                     mask_crop_size, flip_probability, mean, std, shuffle_buffer,
                     size_divisibility)
    num_keypoints = len(dataset.keypoint_names)
    if num_keypoints and training and flip_probability > 0 and (
            keypoint_flip_map is None or len(keypoint_flip_map) != num_keypoints):
        raise ValueError(f"{dataset.annotations_path}: {num_keypoints} keypoints need a "
                         f"keypoint flip map of that length to train with flips, got "
                         f"{keypoint_flip_map!r}")
    records, decode = _record_source(dataset, max_instances, training, seed)
    if training:
        records = records.shuffle(min(shuffle_buffer, dataset.num_images), seed=seed,
                                  reshuffle_each_iteration=True)
    if repeat is None:
        repeat = training
    if repeat:
        records = records.repeat()
    example = _make_example_fn(
        training=training, min_size=float(min_size), max_size=float(max_size),
        pad_size=None if pad_size is None else int(pad_size), max_instances=int(max_instances),
        mask_crop_size=int(mask_crop_size), flip_probability=float(flip_probability),
        mean=mean, std=std, keypoint_flip_map=keypoint_flip_map, channel_order=channel_order,
        decode=decode)
    if training:
        # One random value per element drives that element's flip: reproducible under a seed
        # regardless of how map's parallel calls are scheduled.
        records = tf.data.Dataset.zip((records, tf.data.Dataset.random(seed=seed)))
    examples = records.map(example, num_parallel_calls=tf.data.AUTOTUNE)
    if pad_size is not None:
        return examples.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    if training:
        # Detectron2's AspectRatioGroupedDataset: one bucket per orientation, a batch is
        # emitted when its bucket is full. Deterministic: the input order decides it.
        batches = examples.group_by_window(
            key_func=_orientation, window_size=batch_size,
            reduce_func=lambda _, window: window.padded_batch(batch_size, drop_remainder=True))
    else:
        batches = examples.padded_batch(batch_size)
    divisibility = int(size_divisibility)
    batches = batches.map(
        lambda features: dict(features, images=pad_to_multiple(features["images"], divisibility)))
    return batches.prefetch(tf.data.AUTOTUNE)


def _orientation(features):
    """Bucket of an example: 0 landscape (w > h), 1 portrait or square (Detectron2's rule)."""
    height, width = tf.unstack(features["image_sizes"])
    return tf.cast(width <= height, tf.int64)
