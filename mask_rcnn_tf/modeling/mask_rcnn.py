"""The Mask R-CNN keras.Model: forward pass, training targets, losses, train/test steps.

Shapes: B images, H x W padded input, M padded ground-truth instances, S sampled RoIs per image,
F foreground slots of the mask branch, D detections per image, K classes including background.
Boxes are [y1, x1, y2, x2] float32 pixels of the padded input.

Inputs (a dict, as `data.pipeline` yields it):
    images float [B, H, W, 3] normalized; image_sizes float32 [B, 2] (h, w) inside the padding;
    for training also gt_boxes float32 [B, M, 4], gt_classes int32 [B, M] (-1 padding),
    gt_masks float [B, M, Sm, Sm] (each mask cropped to its own box) and, with the keypoint
    branch, gt_keypoints float32 [B, M, Kp, 3] (x, y, v; continuous pixels).
"""

import keras
import tensorflow as tf

from mask_rcnn_tf.modeling import losses
from mask_rcnn_tf.ops import anchors as anchor_ops
from mask_rcnn_tf.ops import keypoint_ops, mask_ops, targets

LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "box_class_loss", "box_loss", "mask_loss")
KEYPOINT_LOSS = "keypoint_loss"


class MaskRCNN(keras.Model):
    """Backbone + FPN + RPN + box head + mask head.

    `call(inputs, training=True)` returns the tensors the losses need (it samples anchors and
    RoIs against the ground truth in `inputs`); `call(inputs, training=False)` returns
    detections: detection_boxes [B, D, 4], detection_scores [B, D], detection_classes int32
    [B, D] (0 on padding), num_detections int32 [B], detection_masks float32 [B, D, 2P, 2P]
    (mask probabilities inside each box) and, with a keypoint branch, detection_keypoints
    float32 [B, D, Kp, 3] (x, y, score; continuous pixels of the padded input).
    """

    def __init__(self, *, backbone, fpn, rpn_head, proposal_generator, box_roi_align,
                 mask_roi_align, box_head, mask_head, detection_generator, anchor_sizes,
                 anchor_aspect_ratios, anchor_offset, rpn_sampling, roi_sampling, rpn_beta,
                 box_beta, mask_target_threshold=0.5, keypoint_roi_align=None,
                 keypoint_head=None, anchor_stride_rule="fixed", **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.fpn = fpn
        self.rpn_head = rpn_head
        self.proposal_generator = proposal_generator
        self.box_roi_align = box_roi_align
        self.mask_roi_align = mask_roi_align
        self.box_head = box_head
        self.mask_head = mask_head
        self.keypoint_roi_align = keypoint_roi_align
        self.keypoint_head = keypoint_head
        self.detection_generator = detection_generator
        self.anchor_sizes = tuple(anchor_sizes)
        self.anchor_aspect_ratios = tuple(anchor_aspect_ratios)
        self.anchor_offset = anchor_offset
        self.anchor_stride_rule = anchor_stride_rule
        self.rpn_sampling = dict(rpn_sampling)
        self.roi_sampling = dict(roi_sampling)
        self.rpn_beta = rpn_beta
        self.box_beta = box_beta
        self.mask_target_threshold = mask_target_threshold
        # Foreground RoIs come first in each sample, so this many rows hold all of them.
        self.max_foreground = int(roi_sampling["num_samples"] * roi_sampling["positive_fraction"])
        self.loss_names = LOSS_NAMES + ((KEYPOINT_LOSS,) if keypoint_head is not None else ())
        self.loss_trackers = {name: keras.metrics.Mean(name=name)
                              for name in ("loss",) + self.loss_names}

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    @property
    def rpn_level_names(self):
        return ["p2", "p3", "p4", "p5", "p6"][: len(self.anchor_sizes)]

    def fold_frozen_norms(self):
        """Folds the backbone's and FPN's frozen BatchNorms into their convs for inference (the
        export does this; FrozenBatchNormalization.fold_into). Returns how many were folded."""
        return self.backbone.fold_frozen_norms() + self.fpn.fold_frozen_norms()

    def _anchors(self, images, rpn_features):
        # Run-time sizes: one traced graph serves inputs of every size.
        sizes = [tf.shape(f)[1:3] for f in rpn_features]
        strides = anchor_ops.level_strides(tf.shape(images)[1:3], sizes, min_level=2,
                                           rule=self.anchor_stride_rule)
        return anchor_ops.generate_anchors([(s[0], s[1]) for s in sizes], strides,
                                           self.anchor_sizes, self.anchor_aspect_ratios,
                                           self.anchor_offset)

    def call(self, inputs, training=False):
        return self.forward(inputs, training=training, with_targets=training)

    def forward(self, inputs, training, with_targets):
        """Runs the network; `with_targets` selects the loss outputs over detections."""
        image_sizes = tf.cast(inputs["image_sizes"], tf.float32)
        features = self.fpn(self.backbone(inputs["images"], training=training), training=training)
        rpn_features = [features[name] for name in self.rpn_level_names]
        rpn_logits, rpn_deltas = self.rpn_head(rpn_features)
        anchors = self._anchors(inputs["images"], rpn_features)
        proposals, _, proposal_valid = self.proposal_generator(
            rpn_logits, rpn_deltas, anchors, image_sizes, training=with_targets)
        if with_targets:
            return self._training_outputs(inputs, image_sizes, features, rpn_logits, rpn_deltas,
                                          anchors, proposals, proposal_valid, training)
        return self._detect(features, proposals, proposal_valid, image_sizes, training)

    def _training_outputs(self, inputs, image_sizes, features, rpn_logits, rpn_deltas, anchors,
                          proposals, proposal_valid, training):
        gt_boxes = tf.cast(inputs["gt_boxes"], tf.float32)
        gt_classes = tf.cast(inputs["gt_classes"], tf.int32)
        gt_valid = gt_classes > 0
        rpn = targets.rpn_targets(tf.concat(anchors, axis=0), gt_boxes, gt_valid, image_sizes,
                                  **self.rpn_sampling)
        sampled = targets.sample_rois(proposals, proposal_valid, gt_boxes, gt_classes, gt_valid,
                                      **self.roi_sampling)
        class_logits, box_deltas = self.box_head(
            self.box_roi_align(features, sampled["rois"]), training=training)
        # Foreground RoIs come first in each image, so the mask branch needs only as many rows
        # as the image with the most of them, not all max_foreground slots (torchvision runs
        # it on the positives alone): with few objects per image most slots are background.
        num_fg = tf.reduce_max(tf.reduce_sum(tf.cast(sampled["is_foreground"], tf.int32), 1))
        fg = slice(0, tf.clip_by_value(num_fg, 1, self.max_foreground))
        fg_rois = sampled["rois"][:, fg]
        mask_logits = self.mask_head(self.mask_roi_align(features, fg_rois), training=training)
        mask_targets = mask_ops.mask_targets(
            tf.cast(inputs["gt_masks"], tf.float32), gt_boxes, fg_rois,
            sampled["matched_gt"][:, fg], int(mask_logits.shape[2]))
        if self.mask_target_threshold is not None:
            mask_targets = tf.cast(mask_targets >= self.mask_target_threshold, tf.float32)
        outputs = {
            "rpn_logits": tf.gather(tf.concat(rpn_logits, axis=1), rpn["indices"], batch_dims=1),
            "rpn_deltas": tf.gather(tf.concat(rpn_deltas, axis=1), rpn["indices"], batch_dims=1),
            "rpn_labels": rpn["labels"],
            "rpn_valid": rpn["valid"],
            "rpn_box_targets": rpn["box_targets"],
            "class_logits": class_logits,
            "box_deltas": box_deltas,
            "roi_classes": sampled["classes"],
            "roi_box_targets": sampled["box_targets"],
            "roi_is_foreground": sampled["is_foreground"],
            "roi_valid": sampled["valid"],
            "mask_logits": mask_logits,
            "mask_targets": mask_targets,
            "mask_classes": sampled["classes"][:, fg],
            "mask_is_foreground": sampled["is_foreground"][:, fg],
        }
        if self.keypoint_head is not None:
            keypoint_logits = self.keypoint_head(
                self.keypoint_roi_align(features, fg_rois), training=training)
            target_index, keypoint_valid = keypoint_ops.keypoint_targets(
                tf.cast(inputs["gt_keypoints"], tf.float32), fg_rois,
                sampled["matched_gt"][:, fg], int(keypoint_logits.shape[2]))
            outputs.update(
                keypoint_logits=keypoint_logits, keypoint_targets=target_index,
                keypoint_valid=keypoint_valid & sampled["is_foreground"][:, fg, None])
        return outputs

    def _detect(self, features, proposals, proposal_valid, image_sizes, training):
        class_logits, box_deltas = self.box_head(
            self.box_roi_align(features, proposals), training=training)
        detections = self.detection_generator(class_logits, box_deltas, proposals,
                                              proposal_valid, image_sizes)
        mask_logits = self.mask_head(
            self.mask_roi_align(features, detections["detection_boxes"]), training=training)
        class_logits = tf.gather(tf.transpose(mask_logits, [0, 1, 4, 2, 3]),
                                 detections["detection_classes"], batch_dims=2)
        detections["detection_masks"] = tf.sigmoid(class_logits)
        if self.keypoint_head is not None:
            boxes = detections["detection_boxes"]
            heatmaps = self.keypoint_head(self.keypoint_roi_align(features, boxes),
                                          training=training)
            detections["detection_keypoints"] = keypoint_ops.heatmaps_to_keypoints(
                heatmaps, boxes)
        return detections

    def compute_losses(self, outputs):
        """Returns a dict of the scalar float32 losses (names in `self.loss_names`)."""
        values = {
            "rpn_objectness_loss": losses.rpn_objectness_loss(
                outputs["rpn_logits"], outputs["rpn_labels"], outputs["rpn_valid"]),
            "rpn_box_loss": losses.rpn_box_loss(
                outputs["rpn_deltas"], outputs["rpn_box_targets"], outputs["rpn_labels"],
                outputs["rpn_valid"], self.rpn_beta),
            "box_class_loss": losses.box_class_loss(
                outputs["class_logits"], outputs["roi_classes"], outputs["roi_valid"]),
            "box_loss": losses.box_regression_loss(
                outputs["box_deltas"], outputs["roi_classes"], outputs["roi_box_targets"],
                outputs["roi_is_foreground"], outputs["roi_valid"], self.box_beta),
            "mask_loss": losses.mask_loss(
                outputs["mask_logits"], outputs["mask_classes"], outputs["mask_targets"],
                outputs["mask_is_foreground"]),
        }
        if self.keypoint_head is not None:
            values[KEYPOINT_LOSS] = losses.keypoint_loss(
                outputs["keypoint_logits"], outputs["keypoint_targets"], outputs["keypoint_valid"])
        return values

    def _report(self, loss_values, total):
        self.loss_trackers["loss"].update_state(total)
        for name in self.loss_names:
            self.loss_trackers[name].update_state(loss_values[name])
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}

    def train_step(self, data):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            outputs = self(data, training=True)
            loss_values = self.compute_losses(outputs)
            if replicas > 1:
                loss_values = _global_batch_losses(loss_values, outputs)
            total = tf.add_n(list(loss_values.values()))
            scaled = self.optimizer.scale_loss(total)
        grads = self.gradients_to_apply(tape.gradient(scaled, self.trainable_variables))
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        if replicas > 1:
            # Keras averages the replicas' logs: scaling each replica's share by the number
            # of replicas turns that average into the global-batch loss.
            loss_values = {name: value * replicas for name, value in loss_values.items()}
            total = total * replicas
        return self.step_logs(self._report(loss_values, total))

    def test_step(self, data):
        loss_values = self.compute_losses(self.forward(data, training=False, with_targets=True))
        return self.step_logs(self._report(loss_values, tf.add_n(list(loss_values.values()))))

    # Hooks of the training loop. As here, a step hands the optimizer this replica's
    # gradients and Keras the step's logs unchanged; training/keras_distribute.py overrides
    # them where Keras' tf.distribute handling needs help.

    def gradients_to_apply(self, grads):
        """The gradients passed to optimizer.apply_gradients: list, None for variables
        without one."""
        return grads

    def step_logs(self, logs):
        """The dict of logs train_step and test_step return to Keras."""
        return logs


# The tensor each loss of `losses` is normalized by: its value is a sum over the local batch
# divided by max(1, number of True entries of this mask).
LOSS_NORMALIZERS = {
    "rpn_objectness_loss": "rpn_valid",
    "rpn_box_loss": "rpn_valid",
    "box_class_loss": "roi_valid",
    "box_loss": "roi_valid",
    "mask_loss": "mask_is_foreground",
    KEYPOINT_LOSS: "keypoint_valid",
}


def _global_batch_losses(loss_values, outputs):
    """This replica's share of each loss of the global batch, as if one device held it all.

    Each loss is normalized by a count over the local batch (sampled anchors or RoIs,
    foreground RoIs), and those counts differ between replicas. Re-normalizing the local sum
    by the count summed over all replicas makes the replicas' shares add up to exactly the
    loss of the global batch, so the summed gradient is the one-device gradient.

    Args:
      loss_values: dict of scalar float32 losses (LOSS_NAMES) of this replica.
      outputs: the training outputs they were computed from.

    Returns:
      dict of scalar float32, the same keys: loss * local count / global count.
    """
    names = list(loss_values)
    counts = tf.stack([tf.reduce_sum(tf.cast(outputs[LOSS_NORMALIZERS[name]], tf.float32))
                       for name in names])
    totals = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, counts)
    weights = tf.maximum(counts, 1.0) / tf.maximum(totals, 1.0)
    return {name: loss_values[name] * weights[i] for i, name in enumerate(names)}
