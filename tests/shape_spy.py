"""Records the run-time sizes of the tensors a model's backbone receives, in graph code too."""

import tensorflow as tf

SLOTS = 8


class BackboneSizes:
    """Makes `model.backbone` record (H, W) of each input it runs on, the first SLOTS calls.

    Variable assignments, unlike Python side effects, run on every call of a traced function
    and can be saved in a SavedModel: attach `variables` to the saved object to keep them."""

    def __init__(self, model):
        self.sizes = tf.Variable(tf.zeros([SLOTS, 2], tf.int32), trainable=False)
        self.count = tf.Variable(0, trainable=False)
        self.variables = [self.sizes, self.count]
        call = model.backbone.call

        def recording_call(images, *args, **kwargs):
            record = self.sizes.scatter_nd_update([[self.count]], [tf.shape(images)[1:3]])
            with tf.control_dependencies([record]):
                advance = self.count.assign_add(1)
            with tf.control_dependencies([advance]):
                return call(tf.identity(images), *args, **kwargs)

        model.backbone.call = recording_call

    def seen(self, variables=None):
        """[(H, W), ...] recorded so far (from `variables`, e.g. a loaded SavedModel's copy)."""
        sizes, count = variables or self.variables
        return sizes.numpy()[: int(count.numpy())].tolist()
