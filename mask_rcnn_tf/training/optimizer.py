"""Optimizer construction: SGD or AdamW, with no weight decay on normalization parameters.

Weight decay follows the references: AdamW decays decoupled from the gradient (Keras and
torch agree). SGD adds `weight_decay * w` to the gradient, which then passes through the
momentum buffer, as torch's SGD and Detectron do; Keras' own SGD decays decoupled, which at
momentum 0.9 is about ten times weaker for the same `weight_decay`, so `CoupledDecaySGD`
restores the paper's recipe.
"""

import keras

OPTIMIZER_NAMES = ("sgd", "adamw")


def _is_normalization(layer):
    # Subclasses (e.g. a frozen BatchNorm) count too, whatever their own name.
    return any("Normalization" in cls.__name__ for cls in type(layer).__mro__)


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class CoupledDecaySGD(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 term in the gradient (torch.optim.SGD semantics)."""

    def _apply_weight_decay(self, variables):
        # Replaced by the gradient term in update_step.
        return

    def update_step(self, gradient, variable, learning_rate):
        if self.weight_decay is not None and self._use_weight_decay(variable):
            gradient = gradient + keras.ops.cast(self.weight_decay, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)


def no_decay_variables(model, decay_biases=True):
    """The trainable variables of `model` that weight decay must not touch.

    These are all weights of normalization layers (any layer whose class, or a base class,
    has "Normalization" in its name: BatchNormalization, GroupNormalization,
    LayerNormalization, ...), at any depth, and, when `decay_biases` is False, every variable
    named "bias".

    Args:
      model: a built keras.Model.
      decay_biases: whether biases get weight decay (torchvision and Detectron decay them).

    Returns:
      list of keras.Variable, each a trainable variable of `model`, without duplicates.

    Raises:
      ValueError: if the model or one of its normalization layers is not built yet, since
        the variables to exclude would not exist.
    """
    trainable = model.trainable_variables
    if not trainable:
        raise ValueError(
            f"model {model.name!r} has no trainable variables yet: build it (call it on a "
            "batch) before creating the optimizer"
        )
    excluded = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if not _is_normalization(layer):
            continue
        if not layer.built:
            raise ValueError(
                f"normalization layer {layer.name!r} is not built: build the model before "
                "creating the optimizer, or its weights would be decayed"
            )
        for variable in layer.weights:
            excluded[id(variable)] = variable
    if not decay_biases:
        for variable in trainable:
            if variable.name == "bias":
                excluded[id(variable)] = variable
    trainable_ids = {id(v) for v in trainable}
    return [v for key, v in excluded.items() if key in trainable_ids]


def build_optimizer(
    model,
    *,
    name,
    learning_rate,
    momentum=0.9,
    weight_decay=1e-4,
    clipnorm=None,
    global_clipnorm=None,
    nesterov=False,
    decay_biases=True,
):
    """Creates the training optimizer for `model`, norm parameters excluded from decay.

    Args:
      model: a built keras.Model (its variables must exist, see `no_decay_variables`).
      name: "sgd" (keras SGD) or "adamw" (keras AdamW).
      learning_rate: float or keras LearningRateSchedule.
      momentum: SGD momentum; for AdamW, beta_1 (its first-moment momentum).
      weight_decay: weight decay coefficient, >= 0 (an L2 gradient term for SGD, decoupled
        for AdamW).
      clipnorm: clip each gradient to this L2 norm (or None).
      global_clipnorm: clip all gradients jointly to this global L2 norm (or None).
      nesterov: Nesterov momentum, SGD only.
      decay_biases: whether variables named "bias" get weight decay.

    Returns:
      keras.optimizers.Optimizer, not built yet.

    Raises:
      ValueError: unknown name, out-of-range value or unbuilt model.
    """
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"optimizer name must be one of {OPTIMIZER_NAMES}, got {name!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if nesterov and name != "sgd":
        raise ValueError(f"nesterov=True applies to 'sgd' only, got optimizer {name!r}")
    excluded = no_decay_variables(model, decay_biases=decay_biases)
    common = dict(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        clipnorm=clipnorm,
        global_clipnorm=global_clipnorm,
    )
    if name == "sgd":
        optimizer = CoupledDecaySGD(momentum=momentum, nesterov=nesterov, **common)
    else:
        optimizer = keras.optimizers.AdamW(beta_1=momentum, **common)
    optimizer.exclude_from_weight_decay(var_list=excluded)
    return optimizer
