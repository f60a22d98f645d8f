"""train(): config -> strategy, data, model, optimizer, callbacks -> model.fit, with resume."""

import logging
import math
import typing
from pathlib import Path

import keras
import yaml

from mask_rcnn_tf.config import Config, ConfigError, TrainConfig, to_dict
from mask_rcnn_tf.data.input_errors import naming_input_errors
from mask_rcnn_tf.data.inputs import load_split, make_training_input
from mask_rcnn_tf.io_utils import atomic_path
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.training import callbacks as callback_lib
from mask_rcnn_tf.training.backup import restore_backup, worker_output_dir
from mask_rcnn_tf.training.checkpoints import CheckpointStore
from mask_rcnn_tf.training.keras_distribute import DistributedMaskRCNN
from mask_rcnn_tf.training.optimizer import build_optimizer
from mask_rcnn_tf.training.schedules import WarmupCosineDecay, WarmupStepDecay
from mask_rcnn_tf.training.strategy import make_strategy
from mask_rcnn_tf.weights.init import apply_init_weights, read_init_weights
from mask_rcnn_tf.weights.io import latest_checkpoint
from mask_rcnn_tf.weights.labels import SCHEMA_NAME, write_label_schema

logger = logging.getLogger("mask_rcnn_tf.training")

FINAL_WEIGHTS = "model.weights.h5"


def batch_scale(config: TrainConfig, num_replicas: int) -> float:
    """k = batch_size * num_replicas / reference_batch_size (reference null: batch_size)."""
    return config.batch_size * num_replicas / (config.reference_batch_size or config.batch_size)


def scaled_learning_rate(config: TrainConfig, num_replicas: int) -> tuple[float, int]:
    """Learning rate and warm-up length for the global batch of `num_replicas` replicas.

    Linear scaling (Goyal et al. 2017; Detectron2's reference world size): with k =
    batch_scale(config, num_replicas), the rate is learning_rate * k and the warm-up lasts
    round(warmup_steps / k) steps, the same number of images. Without `scale_lr`, or when k is 1, both are the configured values.

    Returns:
      (learning_rate, warmup_steps).
    """
    if not config.scale_lr:
        return config.learning_rate, config.warmup_steps
    factor = batch_scale(config, num_replicas)
    return config.learning_rate * factor, round(config.warmup_steps / factor)


class ScaledSchedule(typing.NamedTuple):
    """The schedule a run follows: rate, warm-up, total steps and milestones, in its steps."""

    learning_rate: float
    warmup_steps: int
    steps: int
    milestones: tuple[int, ...]


def scaled_schedule(config: TrainConfig, num_replicas: int) -> ScaledSchedule:
    """scaled_learning_rate, and the length of the run by the linear scaling rule.

    With `scale_schedule` (and `scale_lr`) and an explicit `reference_batch_size`, the run's
    steps and milestones are quoted for the reference batch: with k = global batch / reference
    they become round(steps / k) and round(milestone / k), so the run sees the same number of
    images as the recipe at every point (Detectron2's REFERENCE_WORLD_SIZE scales MAX_ITER and
    STEPS the same way). One GPU with 2 images on the paper's 16-image 1x recipe: k = 1/8,
    720k steps, drops at 480k and 640k. Without a reference (null: one replica's batch) or with
    `scale_schedule: false`, steps and milestones are optimizer steps as configured.
    """
    learning_rate, warmup_steps = scaled_learning_rate(config, num_replicas)
    if not (config.scale_lr and config.scale_schedule and config.reference_batch_size):
        return ScaledSchedule(learning_rate, warmup_steps, config.steps, config.milestones)
    factor = batch_scale(config, num_replicas)
    return ScaledSchedule(learning_rate, warmup_steps, max(1, round(config.steps / factor)),
                          tuple(max(1, round(m / factor)) for m in config.milestones))


def make_schedule(config: Config, num_replicas: int = 1):
    """The learning-rate schedule of `train.schedule` over the run's optimizer steps, scaled
    for the global batch of `num_replicas` replicas (see scaled_schedule)."""
    t = config.train
    learning_rate, warmup_steps, steps, milestones = scaled_schedule(t, num_replicas)
    if t.schedule == "cosine":
        if warmup_steps >= steps:
            raise ConfigError(f"train.steps ({steps} once scaled) must exceed the warm-up, "
                              f"{warmup_steps} steps once scaled to {num_replicas} replicas")
        return WarmupCosineDecay(learning_rate, warmup_steps, t.warmup_factor, steps)
    return WarmupStepDecay(learning_rate, warmup_steps, t.warmup_factor, milestones, t.gamma)


def compile_model(config: Config, num_replicas: int = 1):
    """Builds the model and its optimizer (call it inside the strategy's scope)."""
    model = build_model(config.model, image_size=config.data.pad_size,
                        model_class=DistributedMaskRCNN)
    t = config.train
    optimizer = build_optimizer(
        model, name=t.optimizer, learning_rate=make_schedule(config, num_replicas),
        momentum=t.momentum, weight_decay=t.weight_decay, global_clipnorm=t.clipnorm)
    model.compile(optimizer=optimizer)
    # Its slot variables must be created in the scope, to be mirrored like the weights.
    model.optimizer.build(model.trainable_variables)
    return model


def check_init_weights_needed(config: Config) -> None:
    """ConfigError when the backbone is frozen (frozen BatchNorm, freeze_at > 0) but the run has
    no train.init_weights: frozen statistics and frozen layers of random weights never learn."""
    b = config.model.backbone
    if config.train.init_weights is None and (b.norm == "frozen_bn" or b.freeze_at > 0):
        frozen = " and ".join(filter(None, [
            "model.backbone.norm=frozen_bn" if b.norm == "frozen_bn" else "",
            f"model.backbone.freeze_at={b.freeze_at}" if b.freeze_at > 0 else ""]))
        raise ConfigError(
            f"{frozen} freezes random weights without train.init_weights: set "
            "train.init_weights=FILE (an ImageNet backbone from convert-torchvision, see README "
            "\"Start from pretrained weights\"), or train from scratch with model.backbone.norm="
            "bn (or gn) and model.backbone.freeze_at=0")


def train(config: Config, model_dir: str | Path, verbose: int | str = "auto") -> keras.Model:
    """Trains `config` into `model_dir` with `train.strategy`, resuming from its latest checkpoint.

    Writes a checkpoint every epoch (`train.steps_per_epoch` steps), TensorBoard logs under
    `model_dir/logs`, the resolved config as `model_dir/config.yaml`, and the final weights as
    `model_dir/model.weights.h5`. In a multi-worker run the chief writes these; the other
    workers write theirs into temporary folders (see training/backup.py), and every worker
    resumes from `model_dir`. Raises callbacks.TrainingDiverged on a non-finite loss.

    A new run (no checkpoint in `model_dir`) starts from `train.init_weights` when set
    (weights/init.py); a resumed run ignores it. The label schema of the training data is
    written to `model_dir/labels.json`. Nothing is written into `model_dir` before the config,
    the data and the init weights have been checked.
    """
    check_init_weights_needed(config)
    # MultiWorkerMirroredStrategy must be created before TensorFlow's runtime starts.
    strategy = make_strategy(config.train.strategy)
    replicas = strategy.num_replicas_in_sync
    model_dir = Path(model_dir)
    keras.utils.set_random_seed(config.train.seed)
    keras.mixed_precision.set_dtype_policy(config.train.mixed_precision)

    init = None
    if config.train.init_weights and latest_checkpoint(model_dir) is None:
        init = read_init_weights(config.train.init_weights, config)
    train_data = load_split(config.data, "train")
    dataset = make_training_input(config.data, train_data, strategy,
                                  batch_size=config.train.batch_size, seed=config.train.seed)
    with strategy.scope():
        model = compile_model(config, replicas)
    schedule = scaled_schedule(config.train, replicas)
    logger.info("global batch %d (%d per replica x %d replicas), learning rate %g, warm-up %d "
                "steps, %d steps, milestones %s", config.train.batch_size * replicas,
                config.train.batch_size, replicas, schedule.learning_rate,
                schedule.warmup_steps, schedule.steps, list(schedule.milestones))
    store = CheckpointStore(model_dir, model, model.optimizer, keep_last=config.train.keep_checkpoints)
    initial_epoch = restore_backup(store, strategy)
    epochs = math.ceil(schedule.steps / config.train.steps_per_epoch)
    if initial_epoch:
        logger.info("resuming from %s at epoch %d of %d", store.latest(), initial_epoch, epochs)
        if config.train.init_weights:
            logger.info("train.init_weights %s ignored: the run resumes from its own checkpoint",
                        config.train.init_weights)
    elif init is not None:
        apply_init_weights(model, init, config)

    evaluate_fn = None
    if config.train.eval_every_epochs:
        from mask_rcnn_tf.evaluation.evaluate import evaluate_model

        val_data = load_split(config.data, "val")

        def evaluate_fn():
            return evaluate_model(model, config.data, val_data,
                                  batch_size=config.eval.batch_size, verbose=False,
                                  keypoint_sigmas=config.eval.keypoint_oks_sigmas,
                                  backend=config.eval.backend)

    model_dir.mkdir(parents=True, exist_ok=True)
    with worker_output_dir(model_dir, strategy) as output_dir:
        output_dir = Path(output_dir)
        if output_dir != model_dir:
            store = CheckpointStore(output_dir, model, model.optimizer, keep_last=1)
        with atomic_path(output_dir / "config.yaml") as tmp:
            Path(tmp).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        write_label_schema(output_dir / SCHEMA_NAME, train_data.label_schema)
        callbacks = callback_lib.make_callbacks(
            store, log_dir=output_dir / "logs", evaluate_fn=evaluate_fn,
            eval_every_epochs=config.train.eval_every_epochs)
        if initial_epoch < epochs:
            with naming_input_errors(train_data):
                model.fit(dataset, epochs=epochs, steps_per_epoch=config.train.steps_per_epoch,
                          initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)
            callback_lib.raise_if_diverged(callbacks)
        with atomic_path(output_dir / FINAL_WEIGHTS) as tmp:
            model.save_weights(tmp)
    return model
