"""Config-facing entry to the input pipeline: a DataConfig split -> (CocoDataset, tf.data.Dataset)."""

import dataclasses

from mask_rcnn_tf.config import ConfigError, DataConfig
from mask_rcnn_tf.data.coco import (CocoDataset, LabelSchema, load_coco, load_ground_truth,
                                   read_label_schema)
from mask_rcnn_tf.data.pipeline import build_dataset


def load_split(config: DataConfig, split: str):
    """Reads `data.<split>.annotations` / `data.<split>.images` (split: "train" or "val"), or,
    with `data.<split>.tfrecords` set, opens those shards (for "val" with the ground truth of
    `data.val.annotations`, which pycocotools needs).

    Returns:
        CocoDataset, or TFRecordSource (data/tfrecords.py) for the shards.
    """
    paths = getattr(config, split)
    if paths.tfrecords:
        from mask_rcnn_tf.data.tfrecords import open_tfrecords

        source = open_tfrecords(paths.tfrecords)
        if split == "train":
            return source
        if not paths.annotations:
            raise ConfigError(f"data.{split}.annotations is not set: evaluation on "
                              f"data.{split}.tfrecords scores against that file")
        return source.with_ground_truth(*load_ground_truth(paths.annotations),
                                        paths.annotations)
    for key in ("annotations", "images"):
        if not getattr(paths, key):
            raise ConfigError(f"data.{split}.{key} is not set (use --set data.{split}.{key}=PATH)")
    return load_coco(paths.annotations, paths.images, verify_images=config.check_images)


def make_dataset(config: DataConfig, dataset: CocoDataset, *, training: bool, batch_size: int,
                 seed: int | None = None):
    """The batched tf.data pipeline for `dataset` with the config's resizing and padding."""
    return build_dataset(
        dataset, training=training, batch_size=batch_size, min_size=config.min_size,
        max_size=config.max_size, pad_size=square_pad_size(config),
        max_instances=config.max_instances,
        mask_crop_size=config.mask_crop_size, flip_probability=config.flip_probability,
        mean=config.mean, std=config.std, shuffle_buffer=config.shuffle_buffer, seed=seed,
        keypoint_flip_map=config.keypoint_flip_map or None, channel_order=config.channel_order,
        size_divisibility=config.size_divisibility)


def square_pad_size(config: DataConfig) -> int | None:
    """The side every image is padded to with `data.pad_mode: square`; None (per-batch
    padding) otherwise."""
    return config.pad_size if config.pad_mode == "square" else None


def make_training_input(config: DataConfig, dataset: CocoDataset, strategy, *, batch_size: int,
                        seed: int | None = None):
    """The training input of a tf.distribute run: batches of `batch_size` images per replica.

    Each input pipeline (one per worker) reads its own shard of the images, `records[i::n]`
    (from TFRecords: its own shard files, `files[i::n]`), shuffled with `seed + i`; the
    strategy hands consecutive batches of a pipeline to that worker's replicas. So no image
    appears twice in a global step, and with one worker (one_device, mirrored) the replicas see
    exactly the image order of a one-device run, split into per-replica batches. Under the default strategy this is `make_dataset` itself.

    Args:
        config: the data section.
        dataset: the loaded training split.
        strategy: tf.distribute.Strategy whose scope the model lives in.
        batch_size: images per replica.
        seed: seeds shuffling and flips; None: nondeterministic.

    Returns:
        tf.data.Dataset (default strategy) or tf.distribute.DistributedDataset yielding
        per-replica feature dicts as `data.pipeline` describes them, with B = batch_size.

    With `data.service_address`, each pipeline's preprocessing runs on the tf.data service
    (see _on_service).

    Raises:
        ConfigError: fewer images than input pipelines.
        ValueError: fewer shard files than input pipelines.
    """
    def pipeline(context):
        shard, num_shards = context.input_pipeline_id, context.num_input_pipelines
        if hasattr(dataset, "shard"):  # shards: each pipeline reads its own files
            return _on_service(config, make_dataset(
                config, dataset.shard(shard, num_shards), training=True,
                batch_size=batch_size, seed=None if seed is None else seed + shard))
        if len(dataset.records) < num_shards:
            raise ConfigError(f"{dataset.annotations_path}: {len(dataset.records)} images cannot "
                              f"feed {num_shards} workers")
        records = dataset.records[shard::num_shards]
        return _on_service(config, make_dataset(
            config, dataclasses.replace(dataset, records=records), training=True,
            batch_size=batch_size, seed=None if seed is None else seed + shard))

    return strategy.distribute_datasets_from_function(pipeline)


def load_label_schema(config: DataConfig) -> LabelSchema:
    """Class names (categories sorted by id), keypoint names and skeleton of a model trained on
    the data, read from the train (else val) annotations file without loading the dataset, or
    from the manifest of `data.train.tfrecords`."""
    if config.train.tfrecords and not config.train.annotations:
        from mask_rcnn_tf.data.tfrecords import open_tfrecords

        return open_tfrecords(config.train.tfrecords).label_schema
    for split in ("train", "val"):
        path = getattr(config, split).annotations
        if path:
            return read_label_schema(path)
    raise ConfigError("data.train.annotations (or data.val.annotations) must be set to know "
                      "the class names")


def _on_service(config: DataConfig, dataset):
    """`dataset` produced by the tf.data service at `data.service_address` (unchanged if unset).

    The service's workers run the whole pipeline (reading, decoding, preprocessing, batching)
    and stream batches to this process; they must be able to read the same paths. Each input
    pipeline is its own job (ShardingPolicy.OFF): the pipeline already reads only its share.
    """
    if not config.service_address:
        return dataset
    import tensorflow as tf

    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.OFF,
        service=f"grpc://{config.service_address}"))
