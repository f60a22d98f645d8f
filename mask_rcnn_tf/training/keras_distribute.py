"""Workarounds for Keras 3.15's tf.distribute handling in model.fit / model.evaluate.

`DistributedMaskRCNN` is the model the trainer builds (training/train.py): MaskRCNN with three
fixes for Keras behaviour under MirroredStrategy and MultiWorkerMirroredStrategy, each through
private Keras API. Each is described below with the Keras 3.15.1 code it works around; the
upstream reports closest to them (none names exactly our case, none is fixed in 3.15):
  - first-batch build under MultiWorkerMirroredStrategy with dict inputs: keras-team/keras#20329
    ("Tensorflow MultiWorkerMirroredStrategy and input dictionaries", open);
  - per-replica reduction of step outputs across workers: keras-team/keras#19280 ("metrics
    don't reduce to mean on multi-gpu");
  - clipping applied to each replica's gradient before the all-reduce:
    tensorflow/tensorflow#33929 (the Keras optimizer's clipnorm under a distribution strategy;
    Keras 3's BaseOptimizer kept clipping before aggregation).
tests/training/test_distribute_keras.py asserts that code is still there (it fails once Keras
changes, so the workaround can go); tests/training/test_distribute_runs.py shows that the
multi-device runs equal one device's.
"""

import tensorflow as tf

from mask_rcnn_tf.modeling.mask_rcnn import MaskRCNN


class DistributedMaskRCNN(MaskRCNN):
    """MaskRCNN for model.fit under any tf.distribute strategy (the same model otherwise)."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras' first-batch fetch when the model is already built.

        Keras 3.15 (keras/src/backend/tensorflow/trainer.py,
        TensorFlowTrainer._maybe_symbolic_build): fit and evaluate take the first batch and
        reduce it over the replicas with `self.distribute_strategy.reduce`, only to build the
        model; MultiWorkerMirroredStrategy rejects that reduction of a nested, partly integer
        batch. The factory builds the model before training, so no batch is needed: Keras then
        only builds the optimizer.
        """
        if iterator is not None and self.built and all(
                layer.built for layer in self._flatten_layers()):
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def step_logs(self, logs):
        """Gives the step's logs the shape Keras can reduce across workers.

        Keras 3.15 (trainer.py, reduce_per_replica): across workers
        (`strategy.extended._in_multi_worker_mode()`) every step output is reduced with
        `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars; [1] tensors reduce to
        the same mean over replicas.
        """
        strategy = tf.distribute.get_strategy()
        if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and strategy.extended._in_multi_worker_mode()):
            return logs
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}

    def gradients_to_apply(self, grads):
        """Sums the gradients over replicas first when the optimizer clips or scales the loss.

        Keras 3.15 (keras/src/optimizers/base_optimizer.py, _backend_apply_gradients) clips
        each replica's gradient before the all-reduce, not their sum, and its
        LossScaleOptimizer (_tf_apply) decides on the first replica's gradient alone whether a
        step is finite. Clipping (by global norm) and the finiteness check must see the
        global-batch gradient, so it is all-reduced here and clipped; each replica then hands
        the optimizer 1/replicas of it, whose own all-reduce adds them back up and whose clip
        no longer changes it. Without clipping or loss scaling the optimizer's all-reduce is
        enough.

        Args:
          grads: list of (possibly scaled) gradients of this replica, None for variables
            without one.

        Returns:
          list of gradients to pass to optimizer.apply_gradients.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        scales_loss = optimizer is not self.optimizer
        if replicas == 1 or not (optimizer.global_clipnorm or scales_loss):
            return grads
        if optimizer.clipnorm or optimizer.clipvalue:
            raise ValueError("with several replicas only global_clipnorm is supported: Keras "
                             "would apply clipnorm or clipvalue to each replica's gradient")
        present = [i for i, grad in enumerate(grads) if grad is not None]
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        if optimizer.global_clipnorm:
            # The gradient is scaled by the loss scale; so is the norm it may reach.
            limit = optimizer.global_clipnorm * self.optimizer.scale_loss(1.0)
            summed, _ = tf.clip_by_global_norm(summed, limit)
        result = list(grads)
        for i, grad in zip(present, summed):
            result[i] = grad / replicas
        return result
