"""train(): config -> data, model, optimizer, callbacks -> model.fit, with resume."""

import logging
import math
from pathlib import Path

import keras
import tensorflow as tf
import yaml

from mask_rcnn_tf.config import Config, to_dict
from mask_rcnn_tf.data.inputs import load_split, make_dataset
from mask_rcnn_tf.io_utils import atomic_path
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.training import callbacks as callback_lib
from mask_rcnn_tf.training.checkpoints import CheckpointStore
from mask_rcnn_tf.training.optimizer import build_optimizer
from mask_rcnn_tf.training.schedules import WarmupCosineDecay, WarmupStepDecay

logger = logging.getLogger("mask_rcnn_tf.training")

FINAL_WEIGHTS = "model.weights.h5"


def make_schedule(config: Config):
    """The learning-rate schedule of `train.schedule` over `train.steps` optimizer steps."""
    t = config.train
    if t.schedule == "cosine":
        return WarmupCosineDecay(t.learning_rate, t.warmup_steps, t.warmup_factor, t.steps)
    return WarmupStepDecay(t.learning_rate, t.warmup_steps, t.warmup_factor, t.milestones, t.gamma)


def compile_model(config: Config):
    """Builds the model and its optimizer (inside the current distribution scope)."""
    model = build_model(config.model, image_size=config.data.pad_size)
    t = config.train
    optimizer = build_optimizer(
        model, name=t.optimizer, learning_rate=make_schedule(config), momentum=t.momentum,
        weight_decay=t.weight_decay, global_clipnorm=t.clipnorm)
    model.compile(optimizer=optimizer)
    return model


def train(config: Config, model_dir: str | Path, verbose: int | str = "auto") -> keras.Model:
    """Trains `config` into `model_dir`, resuming from its latest checkpoint if there is one.

    Writes a checkpoint every epoch (`train.steps_per_epoch` steps), TensorBoard logs under
    `model_dir/logs`, the resolved config as `model_dir/config.yaml`, and the final weights as
    `model_dir/model.weights.h5`. Raises callbacks.TrainingDiverged on a non-finite loss.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.train.seed)
    keras.mixed_precision.set_dtype_policy(config.train.mixed_precision)

    train_data = load_split(config.data, "train")
    dataset = make_dataset(config.data, train_data, training=True,
                           batch_size=config.train.batch_size, seed=config.train.seed)
    model = compile_model(config)
    store = CheckpointStore(model_dir, model, model.optimizer, keep_last=config.train.keep_checkpoints)
    initial_epoch = store.restore_latest()
    epochs = math.ceil(config.train.steps / config.train.steps_per_epoch)
    if initial_epoch:
        logger.info("resuming from %s at epoch %d of %d", store.latest(), initial_epoch, epochs)
    with atomic_path(model_dir / "config.yaml") as tmp:
        Path(tmp).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    evaluate_fn = None
    if config.train.eval_every_epochs:
        from mask_rcnn_tf.evaluation.evaluate import evaluate_model

        val_data = load_split(config.data, "val")

        def evaluate_fn():
            return evaluate_model(model, config.data, val_data,
                                  batch_size=config.eval.batch_size, verbose=False)

    callbacks = callback_lib.make_callbacks(
        store, log_dir=model_dir / "logs", evaluate_fn=evaluate_fn,
        eval_every_epochs=config.train.eval_every_epochs)
    if initial_epoch < epochs:
        model.fit(dataset, epochs=epochs, steps_per_epoch=config.train.steps_per_epoch,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)
        callback_lib.raise_if_diverged(callbacks)
    with atomic_path(model_dir / FINAL_WEIGHTS) as tmp:
        model.save_weights(tmp)
    return model
