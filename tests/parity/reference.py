"""torchvision's Mask R-CNN as the reference for the parity tests, and layout conversions.

The reference is `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` with every
statistic and head made non-trivial, so that a wrong transpose, order or offset cannot hide
behind zeros, ones or a symmetric initialisation:
- BatchNorm statistics are set from the test image itself (as if the network had been trained
  on such images), then perturbed per channel, and gamma/beta drawn at random: activations stay
  O(1) through the 50 layers instead of growing into the thousands.
- FPN output convs are rescaled so each level has unit standard deviation on that image.
- RPN, box and mask heads are redrawn with N(0, 1/fan_in) kernels and N(0, 0.1) biases; the
  three logit layers get three times that scale, so objectness, class scores and masks have
  spread (class probabilities above the 0.05 threshold, masks with both values).

Shapes: torchvision is NCHW with [x1, y1, x2, y2] boxes; this project NHWC with [y1, x1, y2, x2].
"""

import numpy as np
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
LEVELS = ("p2", "p3", "p4", "p5", "p6")
NUM_ANCHORS = 3
_LOGIT_LAYERS = ("rpn.head.cls_logits.weight", "roi_heads.box_predictor.cls_score.weight",
                 "roi_heads.mask_predictor.mask_fcn_logits.weight")


def normalized_image(image, padded_size):
    """Normalizes uint8 RGB [h, w, 3] and zero-pads it (after normalization, as torchvision's
    batch_images does) to padded_size (H, W): float32 [1, H, W, 3]."""
    height, width = image.shape[:2]
    out = np.zeros((1, *padded_size, 3), np.float32)
    out[0, :height, :width] = (image.astype(np.float32) - MEAN) / STD
    return out


def to_torch(images_nhwc):
    """float32 [B, H, W, C] NumPy -> torch [B, C, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def to_nhwc(tensor):
    """torch [B, C, H, W] -> NumPy [B, H, W, C]."""
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def swap_xy(boxes):
    """[..., 4] boxes [x1, y1, x2, y2] <-> [y1, x1, y2, x2] (the same swap both ways)."""
    return np.asarray(boxes)[..., [1, 0, 3, 2]]


def build_reference(calibration_images, seed=0):
    """torchvision Mask R-CNN (eval mode) with the non-trivial weights described above.

    Args:
        calibration_images: float32 [1, H, W, 3], normalized; sets the BatchNorm statistics
            and FPN scales.
        seed: torch seed of the model's own initialisation and of the redraws.
    """
    torch.manual_seed(seed)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    x = to_torch(calibration_images)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.momentum = 1.0  # the next train-mode pass writes this image's statistics
        model.backbone.body.train()
        model.backbone.body(x)
        model.backbone.body.eval()
        for norm in norms:
            n = norm.num_features
            norm.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            norm.bias.copy_(0.2 * torch.randn(n, generator=generator))
            norm.running_mean.add_(
                0.1 * torch.randn(n, generator=generator) * norm.running_var.sqrt())
            norm.running_var.mul_(torch.rand(n, generator=generator) + 0.5)
        features = model.backbone(x)
        for block, key in zip(model.backbone.fpn.layer_blocks, list(features)[:4]):
            scale = features[key].std()
            block[0].weight.div_(scale)
            block[0].bias.div_(scale)
        for name, param in model.named_parameters():
            if not name.startswith(("rpn.", "roi_heads.")):
                continue
            if name.endswith(".bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
                continue
            # ConvTranspose2d kernels are [C_in, C_out, kh, kw]: each output sums C_in taps.
            fan_in = param.shape[0] if "conv5_mask" in name else param[0].numel()
            gain = 3.0 if name in _LOGIT_LAYERS else 1.0
            param.copy_(torch.randn(param.shape, generator=generator) * gain / fan_in**0.5)
    return model


def state_dict_numpy(model):
    """The model's state dict as NumPy arrays, as read_torch_checkpoint returns it."""
    return {key: value.detach().numpy() for key, value in model.state_dict().items()}


def rpn_outputs_ours_layout(objectness, box_regression):
    """torchvision RPNHead outputs per level -> this project's layout.

    Args:
        objectness: list of torch [B, A, H, W].
        box_regression: list of torch [B, 4A, H, W], (dx, dy, dw, dh) per anchor.

    Returns:
        (logits, deltas): lists of NumPy [B, H*W*A] and [B, H*W*A, 4] (dy, dx, dh, dw).
    """
    logits, deltas = [], []
    for level_logits, level_deltas in zip(objectness, box_regression):
        batch, _, height, width = level_logits.shape
        logits.append(level_logits.permute(0, 2, 3, 1).reshape(batch, -1).numpy())
        level_deltas = level_deltas.view(batch, NUM_ANCHORS, 4, height, width)
        level_deltas = level_deltas.permute(0, 3, 4, 1, 2).reshape(batch, -1, 4).numpy()
        deltas.append(level_deltas[..., [1, 0, 3, 2]])
    return logits, deltas


def max_relative_error(actual, expected):
    """max |actual - expected| / max |expected| over the whole tensor (float64)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def paste_like_torchvision(masks, boxes_yxyx, image_size):
    """torchvision's own paste (roi_heads.paste_masks_in_image) of [N, M, M] probabilities in
    [N, 4] yxyx boxes into an image of image_size (h, w): NumPy [N, h, w]."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    masks = torch.from_numpy(np.array(masks, np.float32))[:, None]
    boxes = torch.from_numpy(np.array(swap_xy(boxes_yxyx), np.float32))
    return paste_masks_in_image(masks, boxes, image_size)[:, 0].numpy()
