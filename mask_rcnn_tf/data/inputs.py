"""Config-facing entry to the input pipeline: a DataConfig split -> (CocoDataset, tf.data.Dataset)."""

from mask_rcnn_tf.config import ConfigError, DataConfig
from mask_rcnn_tf.data.coco import CocoDataset, load_coco, read_categories
from mask_rcnn_tf.data.pipeline import build_dataset


def load_split(config: DataConfig, split: str) -> CocoDataset:
    """Reads `data.<split>.annotations` / `data.<split>.images` (split: "train" or "val")."""
    paths = getattr(config, split)
    for key in ("annotations", "images"):
        if not getattr(paths, key):
            raise ConfigError(f"data.{split}.{key} is not set (use --set data.{split}.{key}=PATH)")
    return load_coco(paths.annotations, paths.images)


def make_dataset(config: DataConfig, dataset: CocoDataset, *, training: bool, batch_size: int,
                 seed: int | None = None):
    """The batched tf.data pipeline for `dataset` with the config's resizing and padding."""
    return build_dataset(
        dataset, training=training, batch_size=batch_size, min_size=config.min_size,
        max_size=config.max_size, pad_size=config.pad_size, max_instances=config.max_instances,
        mask_crop_size=config.mask_crop_size, flip_probability=config.flip_probability,
        mean=config.mean, std=config.std, shuffle_buffer=config.shuffle_buffer, seed=seed)


def load_categories(config: DataConfig) -> list[tuple[int, str]]:
    """(category id, name) pairs sorted by id, read from the train (else val) annotations file:
    the class names of a model trained on that data, without loading the whole dataset."""
    for split in ("train", "val"):
        path = getattr(config, split).annotations
        if path:
            return read_categories(path)
    raise ConfigError("data.train.annotations (or data.val.annotations) must be set to know "
                      "the class names")
