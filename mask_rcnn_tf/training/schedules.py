"""Learning-rate schedules with linear warm-up (Detectron / torchvision convention).

Both schedules take the optimizer's update counter (`optimizer.iterations`, 0 for the first
update) and return a float32 scalar. During warm-up the rate rises linearly from
`base_lr * warmup_factor` at step 0 to `base_lr` at step `warmup_steps`:

    lr = base_lr * (warmup_factor + (1 - warmup_factor) * step / warmup_steps)
"""

import math

import keras
from keras import ops


def _check_warmup(base_lr, warmup_steps, warmup_factor):
    if not base_lr > 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    if int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps}")
    if not 0.0 <= warmup_factor <= 1.0:
        raise ValueError(f"warmup_factor must be in [0, 1], got {warmup_factor}")


def _warmup_multiplier(step, warmup_steps, warmup_factor):
    """Linear warm-up factor, 1 from `warmup_steps` on.

    Args:
      step: float32 [], optimizer update counter.
      warmup_steps: python int >= 0.
      warmup_factor: python float, multiplier at step 0.

    Returns:
      float32 [] in [warmup_factor, 1].
    """
    if warmup_steps == 0:
        return ops.ones_like(step)
    alpha = ops.minimum(step / float(warmup_steps), 1.0)
    return warmup_factor + (1.0 - warmup_factor) * alpha


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then the rate is multiplied by `gamma` at each milestone.

    lr(step) = base_lr * warmup(step) * gamma ** (number of milestones <= step), as in
    Detectron2's WarmupMultiStepLR: a milestone inside the warm-up also applies there.

    Args:
      base_lr: rate after warm-up and before the first milestone.
      warmup_steps: length of the linear warm-up in optimizer steps (0: none).
      warmup_factor: fraction of `base_lr` at step 0, in [0, 1].
      milestones: strictly increasing positive step numbers; from each one on the rate is
        multiplied by `gamma` once more.
      gamma: decay factor per milestone, > 0.
    """

    def __init__(self, base_lr, warmup_steps, warmup_factor, milestones, gamma=0.1):
        _check_warmup(base_lr, warmup_steps, warmup_factor)
        milestones = [int(m) for m in milestones]
        if any(m <= 0 for m in milestones) or any(
            b <= a for a, b in zip(milestones, milestones[1:])
        ):
            raise ValueError(
                f"milestones must be strictly increasing positive steps, got {milestones}"
            )
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.milestones = milestones
        self.gamma = float(gamma)

    def __call__(self, step):
        """Learning rate at `step`.

        Args:
          step: int or float scalar tensor [] (any dtype), optimizer update counter.

        Returns:
          float32 [].
        """
        step = ops.cast(step, "float32")
        lr = self.base_lr * _warmup_multiplier(step, self.warmup_steps, self.warmup_factor)
        if self.milestones:
            milestones = ops.convert_to_tensor(self.milestones, dtype="float32")
            passed = ops.sum(ops.cast(ops.greater_equal(step, milestones), "float32"))
            lr = lr * ops.power(self.gamma, passed)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
        }


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then a half cosine from `base_lr` down to `base_lr * final_factor`.

    With p = (step - warmup_steps) / (total_steps - warmup_steps) clipped to [0, 1]:
    lr = base_lr * (final_factor + (1 - final_factor) * (1 + cos(pi * p)) / 2), so the cosine
    starts where the warm-up ends and the rate stays at its final value after `total_steps`.

    Args:
      base_lr: rate at the end of warm-up.
      warmup_steps: length of the linear warm-up in optimizer steps (0: none).
      warmup_factor: fraction of `base_lr` at step 0, in [0, 1].
      total_steps: step at which the cosine reaches its end, > warmup_steps.
      final_factor: fraction of `base_lr` at `total_steps`, in [0, 1].
    """

    def __init__(self, base_lr, warmup_steps, warmup_factor, total_steps, final_factor=0.0):
        _check_warmup(base_lr, warmup_steps, warmup_factor)
        if int(total_steps) != total_steps or total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps must be an integer > warmup_steps ({warmup_steps}), "
                f"got {total_steps}"
            )
        if not 0.0 <= final_factor <= 1.0:
            raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.total_steps = int(total_steps)
        self.final_factor = float(final_factor)

    def __call__(self, step):
        """Learning rate at `step`.

        Args:
          step: int or float scalar tensor [] (any dtype), optimizer update counter.

        Returns:
          float32 [].
        """
        step = ops.cast(step, "float32")
        progress = ops.clip(
            (step - self.warmup_steps) / float(self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decay = self.final_factor + (1.0 - self.final_factor) * cosine
        warmup = _warmup_multiplier(step, self.warmup_steps, self.warmup_factor)
        return self.base_lr * warmup * decay

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "total_steps": self.total_steps,
            "final_factor": self.final_factor,
        }
