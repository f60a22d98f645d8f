"""Builds the model from a ModelConfig: the one place where config turns into layers."""

import keras
import numpy as np

from mask_rcnn_tf.config import ModelConfig
from mask_rcnn_tf.layers.box_head import BoxHead
from mask_rcnn_tf.layers.detections import DetectionGenerator
from mask_rcnn_tf.layers.fpn import FPN
from mask_rcnn_tf.layers.keypoint_head import KeypointHead
from mask_rcnn_tf.layers.mask_head import MaskHead
from mask_rcnn_tf.layers.norm import FrozenBatchNormalization
from mask_rcnn_tf.layers.multilevel_roi_align import MultiLevelRoIAlign
from mask_rcnn_tf.layers.proposals import ProposalGenerator
from mask_rcnn_tf.layers.resnet import ResNet
from mask_rcnn_tf.layers.rpn_head import RPNHead
from mask_rcnn_tf.modeling.mask_rcnn import MaskRCNN


def build_model(config: ModelConfig, image_size: int | None = None,
                model_class: type[MaskRCNN] = MaskRCNN) -> MaskRCNN:
    """Creates a MaskRCNN (or the subclass `model_class`, e.g. the trainer's); with
    `image_size`, also builds its weights on a dummy input."""
    b, r, h, k = config.backbone, config.rpn, config.roi_heads, config.keypoints
    roi_align_args = dict(sampling_ratio=h.sampling_ratio, aligned=h.aligned,
                          canonical_size=h.canonical_size, canonical_level=h.canonical_level)
    model = model_class(
        backbone=ResNet(depth=b.depth, groups=b.groups, width_per_group=b.width_per_group,
                        base_width=b.base_width, norm=b.norm, norm_groups=b.norm_groups,
                        synchronized_bn=b.synchronized_bn, stride_in_1x1=b.stride_in_1x1,
                        freeze_at=b.freeze_at, name="backbone"),
        fpn=FPN(num_channels=config.fpn.num_channels, use_p6=config.fpn.use_p6,
                norm=config.fpn.norm, norm_groups=b.norm_groups, name="fpn"),
        rpn_head=RPNHead(len(config.anchors.aspect_ratios), config.fpn.num_channels,
                         name="rpn_head"),
        proposal_generator=ProposalGenerator(
            r.pre_nms_top_n_train, r.pre_nms_top_n_test, r.post_nms_top_n_train,
            r.post_nms_top_n_test, r.nms_threshold, r.min_size, r.box_weights,
            name="proposals"),
        box_roi_align=MultiLevelRoIAlign(h.box_roi_size, name="box_roi_align", **roi_align_args),
        mask_roi_align=MultiLevelRoIAlign(h.mask_roi_size, name="mask_roi_align",
                                          **roi_align_args),
        box_head=BoxHead(config.num_classes, h.box_fc_dim, name="box_head"),
        mask_head=MaskHead(config.num_classes, h.mask_conv_dim, h.mask_num_convs,
                           name="mask_head"),
        keypoint_roi_align=(MultiLevelRoIAlign(k.roi_size, name="keypoint_roi_align",
                                               **roi_align_args) if k.num_keypoints else None),
        keypoint_head=(KeypointHead(k.num_keypoints, k.conv_dim, k.num_convs,
                                    name="keypoint_head") if k.num_keypoints else None),
        detection_generator=DetectionGenerator(
            h.score_threshold, h.nms_threshold, h.detections_per_image, h.box_weights,
            h.min_box_size, name="detections"),
        anchor_sizes=config.anchors.sizes,
        anchor_aspect_ratios=config.anchors.aspect_ratios,
        anchor_offset=config.anchors.offset,
        anchor_stride_rule=config.anchors.stride_rule,
        rpn_sampling=dict(fg_iou_threshold=r.fg_iou_threshold, bg_iou_threshold=r.bg_iou_threshold,
                          num_samples=r.batch_size_per_image, positive_fraction=r.positive_fraction,
                          box_weights=r.box_weights, straddle_thresh=r.straddle_thresh),
        roi_sampling=dict(fg_iou_threshold=h.fg_iou_threshold, bg_iou_threshold=h.bg_iou_threshold,
                          num_samples=h.batch_size_per_image, positive_fraction=h.positive_fraction,
                          add_gt_as_proposals=h.add_gt_as_proposals, box_weights=h.box_weights),
        rpn_beta=r.smooth_l1_beta,
        box_beta=h.smooth_l1_beta,
        mask_target_threshold=h.mask_target_threshold,
        name="mask_rcnn",
    )
    if image_size is not None:
        model(dummy_inputs(image_size), training=False)
    return model


def dummy_inputs(image_size: int, batch_size: int = 1) -> dict:
    """Zero images of the padded size: enough to create every weight."""
    return {
        "images": np.zeros((batch_size, image_size, image_size, 3), np.float32),
        "image_sizes": np.full((batch_size, 2), image_size, np.float32),
    }


def count_parameters(model: keras.Model) -> int:
    """Learnable parameters as torchvision counts them: convolution and dense weights and
    biases and trainable norm affine terms; frozen BatchNorm (all four of its tensors are
    buffers in torchvision) and BatchNorm moving statistics are left out."""
    frozen = {id(w) for layer in model._flatten_layers()
              if isinstance(layer, FrozenBatchNormalization) for w in layer.weights}
    return int(sum(np.prod(w.shape) for w in model.weights
                   if id(w) not in frozen and not w.path.endswith(("moving_mean", "moving_variance"))))
