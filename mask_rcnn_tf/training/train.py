"""train(): config -> strategy, data, model, optimizer, callbacks -> model.fit, with resume."""

import logging
import math
from pathlib import Path

import keras
import yaml

from mask_rcnn_tf.config import Config, ConfigError, TrainConfig, to_dict
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

logger = logging.getLogger("mask_rcnn_tf.training")

FINAL_WEIGHTS = "model.weights.h5"


def scaled_learning_rate(config: TrainConfig, num_replicas: int) -> tuple[float, int]:
    """Learning rate and warm-up length for the global batch of `num_replicas` replicas.

    Linear scaling (Goyal et al. 2017; Detectron2's reference world size): with
    k = batch_size * num_replicas / reference_batch_size (reference null: batch_size), the
    rate is learning_rate * k and the warm-up lasts round(warmup_steps / k) steps, the same
    number of images. Without `scale_lr`, or when k is 1, both are the configured values.

    Returns:
      (learning_rate, warmup_steps).
    """
    if not config.scale_lr:
        return config.learning_rate, config.warmup_steps
    factor = config.batch_size * num_replicas / (config.reference_batch_size or config.batch_size)
    return config.learning_rate * factor, round(config.warmup_steps / factor)


def make_schedule(config: Config, num_replicas: int = 1):
    """The learning-rate schedule of `train.schedule` over `train.steps` optimizer steps, scaled
    for the global batch of `num_replicas` replicas (see scaled_learning_rate)."""
    t = config.train
    learning_rate, warmup_steps = scaled_learning_rate(t, num_replicas)
    if t.schedule == "cosine":
        if warmup_steps >= t.steps:
            raise ConfigError(f"train.steps ({t.steps}) must exceed the warm-up, "
                              f"{warmup_steps} steps once scaled to {num_replicas} replicas")
        return WarmupCosineDecay(learning_rate, warmup_steps, t.warmup_factor, t.steps)
    return WarmupStepDecay(learning_rate, warmup_steps, t.warmup_factor, t.milestones, t.gamma)


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


def train(config: Config, model_dir: str | Path, verbose: int | str = "auto") -> keras.Model:
    """Trains `config` into `model_dir` with `train.strategy`, resuming from its latest checkpoint.

    Writes a checkpoint every epoch (`train.steps_per_epoch` steps), TensorBoard logs under
    `model_dir/logs`, the resolved config as `model_dir/config.yaml`, and the final weights as
    `model_dir/model.weights.h5`. In a multi-worker run the chief writes these; the other
    workers write theirs into temporary folders (see training/backup.py), and every worker
    resumes from `model_dir`. Raises callbacks.TrainingDiverged on a non-finite loss.
    """
    # MultiWorkerMirroredStrategy must be created before TensorFlow's runtime starts.
    strategy = make_strategy(config.train.strategy)
    replicas = strategy.num_replicas_in_sync
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.train.seed)
    keras.mixed_precision.set_dtype_policy(config.train.mixed_precision)

    train_data = load_split(config.data, "train")
    dataset = make_training_input(config.data, train_data, strategy,
                                  batch_size=config.train.batch_size, seed=config.train.seed)
    with strategy.scope():
        model = compile_model(config, replicas)
    learning_rate, warmup_steps = scaled_learning_rate(config.train, replicas)
    logger.info("global batch %d (%d per replica x %d replicas), learning rate %g, warm-up %d "
                "steps", config.train.batch_size * replicas, config.train.batch_size, replicas,
                learning_rate, warmup_steps)
    store = CheckpointStore(model_dir, model, model.optimizer, keep_last=config.train.keep_checkpoints)
    initial_epoch = restore_backup(store, strategy)
    epochs = math.ceil(config.train.steps / config.train.steps_per_epoch)
    if initial_epoch:
        logger.info("resuming from %s at epoch %d of %d", store.latest(), initial_epoch, epochs)

    evaluate_fn = None
    if config.train.eval_every_epochs:
        from mask_rcnn_tf.evaluation.evaluate import evaluate_model

        val_data = load_split(config.data, "val")

        def evaluate_fn():
            return evaluate_model(model, config.data, val_data,
                                  batch_size=config.eval.batch_size, verbose=False,
                                  keypoint_sigmas=config.eval.keypoint_oks_sigmas)

    with worker_output_dir(model_dir, strategy) as output_dir:
        output_dir = Path(output_dir)
        if output_dir != model_dir:
            store = CheckpointStore(output_dir, model, model.optimizer, keep_last=1)
        with atomic_path(output_dir / "config.yaml") as tmp:
            Path(tmp).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        callbacks = callback_lib.make_callbacks(
            store, log_dir=output_dir / "logs", evaluate_fn=evaluate_fn,
            eval_every_epochs=config.train.eval_every_epochs)
        if initial_epoch < epochs:
            model.fit(dataset, epochs=epochs, steps_per_epoch=config.train.steps_per_epoch,
                      initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)
            callback_lib.raise_if_diverged(callbacks)
        with atomic_path(output_dir / FINAL_WEIGHTS) as tmp:
            model.save_weights(tmp)
    return model
