"""Reading and validating COCO-format instance annotations.

`load_coco` turns an annotations file into per-image records holding only what the tf.data
pipeline needs: the image path, ground-truth boxes in [y1, x1, y2, x2] pixels, contiguous class
indices and each instance mask as uncompressed COCO run-length counts, so that masks are decoded
in TensorFlow rather than in Python. COCO [x, y, w, h] boxes stop here.

Shape letters: n instances of one image, R runs of one mask, h x w the image size.
"""

import contextlib
import dataclasses
import io
import json
import logging
import os

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mask_rcnn_tf.data.image_check import bad_images_error, check_images, is_file, open_file
from mask_rcnn_tf.progress import Progress

logger = logging.getLogger("mask_rcnn_tf.data")

@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image and its training targets.

    Attributes:
        image_id: the COCO image id.
        path: images_dir joined with the image's file_name.
        height, width: image size from the annotations file, pixels.
        boxes: float32 [n, 4], [y1, x1, y2, x2], original image pixels (clipped to the image).
        classes: int32 [n], contiguous class indices 1..K.
        mask_counts: n int32 arrays [R]: uncompressed COCO RLE of each instance mask, run
            lengths over the column-major (Fortran order) flattened [h, w] mask, alternating
            0-runs and 1-runs, starting with a (possibly empty) run of zeros; each sums to h * w.
        keypoints: float32 [n, Kp, 3] (x, y, v) with x, y in continuous pixels (COCO's
            pixel-index values + 0.5), v = 0 unlabelled, 1 occluded, 2 visible; Kp = 0 for a
            dataset without keypoints.
        annotation_ids: int64 [n], the COCO annotation id of each instance.
    """

    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    mask_counts: tuple
    keypoints: np.ndarray
    annotation_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros([0], np.int64))


@dataclasses.dataclass(frozen=True)
class CocoDataset:
    """A loaded COCO-format dataset.

    Attributes:
        categories: list of (category_id, name); entry i is contiguous class index i + 1.
        records: one ImageRecord per image, in the file's order, images without instances included.
        coco: the pycocotools COCO object over the whole file (crowd annotations included), for
            evaluation.
        annotations_path: the file it was read from.
        keypoint_names: names of the Kp keypoints of the (first) category that defines
            `keypoints`, empty when none does; skeleton: its 1-based limb pairs.
    """

    categories: list
    records: list
    coco: COCO
    annotations_path: str
    keypoint_names: tuple = ()
    skeleton: tuple = ()

    @property
    def num_classes(self):
        """Number of foreground classes K."""
        return len(self.categories)

    @property
    def label_schema(self):
        """The LabelSchema a model trained on this dataset names its classes and keypoints by."""
        return LabelSchema(annotations_path=self.annotations_path, categories=self.categories,
                           keypoint_names=self.keypoint_names, skeleton=self.skeleton)

    @property
    def num_images(self):
        """Number of images (records)."""
        return len(self.records)


def _error(path, message):
    return ValueError(f"{path}: {message}")


def _field(path, obj, key, where):
    if not isinstance(obj, dict) or key not in obj:
        raise _error(path, f"{where} has no field '{key}'")
    return obj[key]


def rle_string_to_counts(counts):
    """Decodes a compressed COCO RLE string into run lengths without building the mask.

    The inverse of pycocotools' rleToString: each count is a little-endian sequence of 5-bit
    groups in characters offset by 48, bit 0x20 meaning "more groups follow" and bit 0x10 of
    the last group the sign; counts from the fourth on are stored as differences to the count
    two places before (the previous run of the same value).

    Args:
        counts: str or bytes, the "counts" of a compressed RLE.

    Returns:
        int64 [R] run lengths.
    """
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    chars = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros([0], np.int64)
    if chars.min() < 0 or chars.max() > 63 or chars[-1] & 0x20:
        raise ValueError("malformed compressed RLE counts string")
    last = (chars & 0x20) == 0
    group = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    position = np.arange(chars.size) - starts[group]
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    num_groups = position[last] + 1
    negative = (chars[last] & 0x10) != 0
    values = np.where(negative, values - (1 << (5 * num_groups)), values)
    # values[i] for i >= 3 is a difference to counts[i - 2]: a running sum along each parity.
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _polygon_counts(path, where, polygons, height, width):
    arrays = []
    for polygon in polygons:
        try:
            coords = np.asarray(polygon, dtype=np.float64)
        except (TypeError, ValueError):
            raise _error(path, f"{where}: polygon must be a list of numbers") from None
        if coords.ndim != 1 or coords.size % 2:
            raise _error(path, f"{where}: polygon must be a flat list of x, y pairs")
        # Under 3 points there is no area, and pycocotools would read 4 numbers as a box.
        if coords.size >= 6:
            arrays.append(coords.tolist())
    if not arrays:
        return np.array([height * width], np.int64)
    rle = mask_utils.merge(mask_utils.frPyObjects(arrays, height, width))
    return rle_string_to_counts(rle["counts"])


def _mask_counts(path, where, segmentation, height, width):
    """Uncompressed run lengths of one annotation's mask, int32 [R]."""
    if isinstance(segmentation, list):
        counts = _polygon_counts(path, where, segmentation, height, width)
    elif isinstance(segmentation, dict):
        size = _field(path, segmentation, "size", f"{where} segmentation")
        raw = _field(path, segmentation, "counts", f"{where} segmentation")
        if list(size) != [height, width]:
            raise _error(path, f"{where}: segmentation size {list(size)} differs from the "
                               f"image's [height, width] [{height}, {width}]")
        if isinstance(raw, (str, bytes)):
            try:
                counts = rle_string_to_counts(raw)
            except (UnicodeEncodeError, ValueError):
                raise _error(path, f"{where}: malformed compressed RLE counts") from None
        elif isinstance(raw, list):
            counts = np.asarray(raw, dtype=np.int64)
        else:
            raise _error(path, f"{where}: segmentation counts must be a string or a list, "
                               f"got {type(raw).__name__}")
        if counts.ndim != 1 or (counts.size and counts.min() < 0):
            raise _error(path, f"{where}: RLE counts must be non-negative integers")
    else:
        raise _error(path, f"{where}: segmentation must be a polygon list or an RLE dict, "
                           f"got {type(segmentation).__name__}")
    if counts.sum() != height * width:
        raise _error(path, f"{where}: RLE counts sum to {counts.sum()}, expected height * width "
                           f"= {height * width}")
    return counts.astype(np.int32)


def _read_json(path):
    if not is_file(path):
        raise FileNotFoundError(f"{path}: annotations file not found")
    with open_file(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _error(path, f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") \
            from None
    except UnicodeDecodeError as err:
        raise _error(path, f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise _error(path, f"top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise _error(path, f"missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise _error(path, f"top-level key '{key}' must be a list")
    return data


def _categories(path, data, category_ids):
    names = {}
    for category in data["categories"]:
        category_id = _field(path, category, "id", "category")
        names[category_id] = _field(path, category, "name", f"category id {category_id}")
    if category_ids is None:
        category_ids = sorted(names)
    else:
        category_ids = list(category_ids)
        for category_id in category_ids:
            if category_id not in names:
                raise _error(path, f"category_ids value {category_id} is not in categories")
        if len(set(category_ids)) != len(category_ids):
            raise _error(path, f"category_ids {category_ids} has duplicates")
    return [(c, names[c]) for c in category_ids], set(names)


@dataclasses.dataclass(frozen=True)
class LabelSchema:
    """What a model trained on an annotations file names: its classes and keypoints.

    Attributes:
        annotations_path: the file it was read from.
        categories: list of (category_id, name) sorted by id; entry i is class index i + 1.
        keypoint_names: names of the Kp keypoints (the categories' `keypoints`), () for none.
        skeleton: the 1-based (a, b) keypoint pairs of the categories' `skeleton`.
    """

    annotations_path: str
    categories: list
    keypoint_names: tuple = ()
    skeleton: tuple = ()


def read_label_schema(annotations_path):
    """The LabelSchema of an annotations file (every category, sorted by id), read as load_coco
    reads it but without the images and annotations."""
    path = os.fspath(annotations_path)
    data = _read_json(path)
    categories, _ = _categories(path, data, None)
    class_of = {category_id: i + 1 for i, (category_id, _) in enumerate(categories)}
    keypoint_names, skeleton = _keypoint_schema(path, data, class_of)
    return LabelSchema(annotations_path=path, categories=categories,
                       keypoint_names=tuple(keypoint_names), skeleton=skeleton)


def load_coco(annotations_path, images_dir, category_ids=None, verify_images=True, workers=None):
    """Reads and validates a COCO instance-segmentation annotations file.

    Crowd annotations (iscrowd=1) stay out of the records (they remain in `coco` for evaluation).
    Degenerate annotations (box width or height under 1 pixel after clipping to the image, or an
    empty mask) and annotations of categories left out by `category_ids` are skipped; one log
    line on logger "mask_rcnn_tf.data" gives the counts.

    Args:
        annotations_path: the COCO JSON file.
        images_dir: folder the images' file_name values are relative to.
        category_ids: optional sequence of category ids, defining class indices 1..K in its order;
            default: every category, sorted by id.
        verify_images: True: check every image's header in parallel (it opens as an image of
            the listed size; see data/image_check.py); "full": decode every image in parallel
            processes; either lists every bad image in one error. False: only check that the
            files exist.
        workers: threads or processes of the image check (None: from the CPU count).

    Returns:
        CocoDataset.

    Raises:
        FileNotFoundError: the annotations file or a listed image does not exist.
        ValueError: malformed file or field, unknown image or category id, undecodable image.
    """
    path = os.fspath(annotations_path)
    data = _read_json(path)
    categories, known_categories = _categories(path, data, category_ids)
    class_of = {category_id: i + 1 for i, (category_id, _) in enumerate(categories)}
    keypoint_names, skeleton = _keypoint_schema(path, data, class_of)

    images = {}
    for image in data["images"]:
        image_id = _field(path, image, "id", "image")
        where = f"image id {image_id}"
        if image_id in images:
            raise _error(path, f"{where} is listed twice")
        height, width = (_field(path, image, key, where) for key in ("height", "width"))
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise _error(path, f"{where}: height and width must be positive integers, "
                               f"got {height!r}, {width!r}")
        image_path = os.path.join(images_dir, _field(path, image, "file_name", where))
        # The check below lists every missing file; without it, stop at the first.
        if not verify_images and not is_file(image_path):
            raise FileNotFoundError(f"{image_path}: image file not found ({where} in {path})")
        images[image_id] = (image_path, height, width, [])

    bad = []
    if verify_images:
        items = [(image_path, height, width) for image_path, height, width, _ in images.values()]
        # A progress line only where the check takes a while.
        progress = Progress(len(items), "images", prefix="checking",
                            enabled=len(items) > 10000 or verify_images == "full")
        bad = check_images(items, full_decode=verify_images == "full", workers=workers,
                           progress=progress)
    try:
        records, skipped = _records(path, data, images, known_categories, class_of,
                                    len(keypoint_names))
    except ValueError as err:
        if bad:  # One report holds both problems: the bad images and the first annotation error.
            raise bad_images_error(bad, path, also=str(err)) from None
        raise
    if bad:
        raise bad_images_error(bad, path)
    logger.info("%s: %d images, %d instances; skipped %d crowd, %d degenerate (box under "
                "1 px or empty mask), %d of categories not in category_ids", path, len(records),
                sum(len(r.classes) for r in records), skipped["crowd"], skipped["degenerate"],
                skipped["other category"])

    return CocoDataset(categories=categories, records=records, coco=_coco_index(data),
                       annotations_path=path, keypoint_names=keypoint_names, skeleton=skeleton)


def _coco_index(data):
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def load_ground_truth(annotations_path):
    """(pycocotools COCO, categories) of an annotations file, for evaluation on images read
    from elsewhere (TFRecord shards); categories as in CocoDataset."""
    path = os.fspath(annotations_path)
    data = _read_json(path)
    categories, _ = _categories(path, data, None)
    return _coco_index(data), categories


def _records(path, data, images, known_categories, class_of, num_keypoints):
    """ImageRecords of the images {image_id: (path, height, width, [])} from the annotations,
    and the counts of skipped annotations by reason."""
    skipped = {"crowd": 0, "degenerate": 0, "other category": 0}
    for annotation in data["annotations"]:
        annotation_id = _field(path, annotation, "id", "annotation")
        where = f"annotation id {annotation_id}"
        image_id = _field(path, annotation, "image_id", where)
        category_id = _field(path, annotation, "category_id", where)
        if image_id not in images:
            raise _error(path, f"{where}: image_id {image_id!r} is not in images")
        if category_id not in known_categories:
            raise _error(path, f"{where}: category_id {category_id!r} is not in categories")
        if annotation.get("iscrowd", 0):
            skipped["crowd"] += 1
            continue
        if category_id not in class_of:
            skipped["other category"] += 1
            continue
        _, height, width, instances = images[image_id]
        bbox = _field(path, annotation, "bbox", where)
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise _error(path, f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}") \
                from None
        segmentation = _field(path, annotation, "segmentation", where)
        counts = _mask_counts(path, where, segmentation, height, width)
        box = np.clip([y, x, y + h, x + w], 0, [height, width, height, width])
        if box[2] - box[0] < 1 or box[3] - box[1] < 1 or not counts[1::2].any():
            skipped["degenerate"] += 1
            continue
        keypoints = _keypoints(path, where, annotation, num_keypoints)
        instances.append((box, class_of[category_id], counts, keypoints, annotation_id))

    records = []
    for image_id, (image_path, height, width, instances) in images.items():
        records.append(ImageRecord(
            image_id=image_id, path=image_path, height=height, width=width,
            boxes=np.array([i[0] for i in instances], np.float32).reshape(-1, 4),
            classes=np.array([i[1] for i in instances], np.int32),
            mask_counts=tuple(i[2] for i in instances),
            keypoints=np.array([i[3] for i in instances], np.float32).reshape(
                len(instances), num_keypoints, 3),
            annotation_ids=np.array([i[4] for i in instances], np.int64)))
    return records, skipped


def _keypoint_schema(path, data, class_of):
    """Keypoint names and skeleton of the categories in use; all must agree (one schema)."""
    schemas = {}
    for category in data["categories"]:
        if category.get("id") in class_of and category.get("keypoints"):
            names = category["keypoints"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise _error(path, f"category id {category['id']}: keypoints must be a list of "
                                   f"names, got {names!r}")
            schemas[tuple(names)] = tuple(tuple(limb) for limb in category.get("skeleton", []))
    if len(schemas) > 1:
        raise _error(path, f"categories define {len(schemas)} different keypoint lists; one "
                           "model predicts one set of keypoints")
    return next(iter(schemas.items()), ((), ()))


def _keypoints(path, where, annotation, num_keypoints):
    """float32 [Kp, 3] (x + 0.5, y + 0.5, v) of an annotation; zeros when it has none."""
    if not num_keypoints:
        return np.zeros([0, 3], np.float32)
    values = annotation.get("keypoints")
    if values is None:
        return np.zeros([num_keypoints, 3], np.float32)
    if not isinstance(values, list) or len(values) != 3 * num_keypoints:
        raise _error(path, f"{where}: keypoints must be {3 * num_keypoints} numbers "
                           f"(x, y, v for each of {num_keypoints}), got "
                           f"{len(values) if isinstance(values, list) else values!r}")
    keypoints = np.array(values, np.float32).reshape(num_keypoints, 3)
    # COCO puts pixel i's centre at i; the model's continuous frame puts it at i + 0.5.
    keypoints[:, :2] += np.where(keypoints[:, 2:] > 0, 0.5, 0.0)
    return keypoints
