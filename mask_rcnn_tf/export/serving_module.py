"""The serving graph: pre- and postprocessing around the Keras model, as SavedModel signatures
that take what a client has (encoded image files or uint8 pixels) and return detections in
that client's image pixels.

Signatures (B images per request, N = roi_heads.detections_per_image, M = 28 the mask side,
K object classes, Kp keypoints, S skeleton limbs, Hc x Wc the largest image of the request):

    serving_default   inputs:  images       string [B]  encoded JPEG / PNG (GIF, BMP), any sizes
    serving_tensor    inputs:  images       uint8 [B, H, W, 3]  RGB
        both outputs:  num_detections       int32 [B]
                       detection_boxes      float32 [B, N, 4]  [y1, x1, y2, x2], pixels of the
                                            original image, clipped to it
                       detection_classes    int32 [B, N]  1..K, 0 on padding rows
                       detection_scores     float32 [B, N]
                       detection_masks      float32 [B, N, M, M]  probabilities inside the box
                       image_sizes          int32 [B, 2]  original (h, w)
                       detection_masks_full uint8 [B, N, Hc, Wc]  (only when exported with
                                            full masks) 0 / 1, pasted into each image, zero
                                            beyond that image's (h, w)
                       detection_masks_encoded_bytes  string [B, N]  (only when exported with
                                            encoded masks) the same mask as
                                            detection_masks_full in the image's own (h, w), as
                                            a PNG (uint8 0 / 1, one channel; b"" for a mask
                                            with no pixel in its image) or COCO RLE counts; b""
                                            on padding rows (export/mask_encoding.py). The
                                            "_bytes" suffix is TF Serving's: its REST API sends
                                            string outputs so named as {"b64": ...}, others as
                                            (UTF-8) text
                       detection_keypoints  float32 [B, N, Kp, 3]  (only for a model with the
                                            keypoint branch) (x, y, score): x, y pixels of the
                                            original image in COCO's pixel-index frame (pixel
                                            i's centre at i), not clipped; score the heatmap's
                                            maximum logit
    metadata          inputs:  unused       int32 [B]  ignored (TF Serving's Predict needs an
                                            input); send e.g. [0]
                      outputs: class_names     string [B, K]  name of class 1 first, per row
                               keypoint_names  string [B, Kp]  (with the keypoint branch)
                               skeleton        int32 [B, S, 2]  (with the keypoint branch)
                                               limbs as 1-based keypoint pairs (COCO's
                                               `skeleton`)

The images of a request are resized and padded together to the largest resized image, each
side rounded up to a multiple of size_divisibility (32), or to the pad_size square (data.pad_mode
square). Rows from num_detections[b] on are zero in every per-detection output. The 28 x 28 masks cover
the unclipped box, which differs from the clipped detection_boxes only for boxes reaching past
the image edge, by under half a pixel of the resized image (round(h * scale) / scale > h); full
masks are pasted with the unclipped box, as evaluation does.
"""

import tensorflow as tf

from mask_rcnn_tf.data.pipeline import padded_size, preprocess_image
from mask_rcnn_tf.export import mask_encoding, postprocess
from mask_rcnn_tf.ops import keypoint_ops
from mask_rcnn_tf.ops.box_ops import clip_boxes

SERVING_DEFAULT = "serving_default"
SERVING_TENSOR = "serving_tensor"
METADATA = "metadata"
LABELS_FILE = "labels.txt"
KEYPOINTS_FILE = "keypoints.txt"

_ENCODED_SPEC = tf.TensorSpec([None], tf.string, name="images")
_PIXELS_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
_UNUSED_SPEC = tf.TensorSpec([None], tf.int32, name="unused")


class ServingModule:
    """A built Mask R-CNN with in-graph preprocessing and postprocessing.

    The methods are plain TensorFlow code (call them in a tf.function or eagerly);
    `saveable()` wraps them as the SavedModel's signatures.

    Args:
        model: a built MaskRCNN (call(..., training=False) returns detections).
        class_names: K names, class 1 first.
        keypoint_names: Kp names, one per keypoint of the model's keypoint branch; () for a
            model without it.
        skeleton: 1-based (a, b) keypoint pairs (COCO's `skeleton`).
        min_size, max_size, pad_size, mean, std, channel_order: the resizing and normalization
            the model was trained with (data config); pad_size None pads each request to its
            largest resized image, rounded up to a multiple of size_divisibility.
        size_divisibility: see pad_size.
        full_masks: add the detection_masks_full output.
        encoded_masks: None, or an encoding of mask_encoding.ENCODINGS ("png", "rle"): add the
            detection_masks_encoded_bytes output.
        mask_threshold: probability at which a pasted mask pixel is foreground.
    """

    def __init__(self, model, *, class_names, min_size, max_size, pad_size, mean, std,
                 full_masks=False, mask_threshold=0.5, keypoint_names=(), skeleton=(),
                 channel_order="rgb", size_divisibility=32, encoded_masks=None):
        self.model = model
        self.class_names = tuple(class_names)
        num_keypoints = 0 if model.keypoint_head is None else model.keypoint_head.num_keypoints
        if len(keypoint_names) != num_keypoints:
            raise ValueError(f"ServingModule: the model predicts {num_keypoints} keypoints, "
                             f"got {len(keypoint_names)} keypoint_names")
        self.keypoint_names = tuple(keypoint_names)
        self.skeleton = tuple(tuple(limb) for limb in skeleton)
        self.pad_size = None if pad_size is None else int(pad_size)
        self.size_divisibility = int(size_divisibility)
        self.preprocess_args = dict(min_size=min_size, max_size=max_size, pad_size=self.pad_size,
                                    mean=tuple(mean), std=tuple(std),
                                    channel_order=channel_order)
        self.full_masks = bool(full_masks)
        if encoded_masks is not None and encoded_masks not in mask_encoding.ENCODINGS:
            raise ValueError(f"ServingModule: encoded_masks must be None or one of "
                             f"{list(mask_encoding.ENCODINGS)}, got {encoded_masks!r}")
        self.encoded_masks = encoded_masks
        self.mask_threshold = float(mask_threshold)

    def saveable(self, labels_path, keypoints_path=None):
        """The object and signatures to pass to tf.saved_model.save.

        The object graph holds the model's tf.Variables, not the Keras model: Keras 3 gives
        many variables the same TensorFlow name ("mask_rcnn/kernel:0") and keeps them where the
        object graph does not look, and a SavedModel saved through the Keras objects loads in
        TF2 but fails in TF1-style sessions ("Could not find variable"), which is how
        tensorflow_model_server and `saved_model_cli run` load it (keras-team/keras#20095;
        keras.export.ExportArchive likewise tracks the tf.Variables its endpoints read).

        Args:
            labels_path: a file holding class_names one per line; saved as assets/labels.txt.
            keypoints_path: a file holding keypoint_names one per line, saved as
                assets/keypoints.txt; None for a model without keypoints.

        Returns:
            (tf.Module, {signature key: concrete function}).
        """
        root = tf.Module(name="mask_rcnn_serving")
        root.model_variables = [v.value for v in self.model.variables]
        root.labels = tf.saved_model.Asset(labels_path)
        if keypoints_path is not None:
            root.keypoint_labels = tf.saved_model.Asset(keypoints_path)
        root.detect_encoded = tf.function(self.detect_encoded, input_signature=[_ENCODED_SPEC])
        root.detect_pixels = tf.function(self.detect_pixels, input_signature=[_PIXELS_SPEC])
        root.metadata = tf.function(self.metadata, input_signature=[_UNUSED_SPEC])
        return root, {
            SERVING_DEFAULT: root.detect_encoded.get_concrete_function(),
            SERVING_TENSOR: root.detect_pixels.get_concrete_function(),
            METADATA: root.metadata.get_concrete_function(),
        }

    def detect_encoded(self, images):
        """Detections on encoded images: images string [B]; outputs as in the module docstring."""
        return self._detect(images, decode=True)

    def detect_pixels(self, images):
        """Detections on pixels: images uint8 [B, H, W, 3] RGB; outputs as in the module
        docstring."""
        checks = [tf.debugging.assert_positive(
            tf.shape(images)[1:3], message="images: height and width must be positive")]
        with tf.control_dependencies(checks):
            return self._detect(tf.identity(images), decode=False)

    def metadata(self, unused):
        """Class names, and keypoint names and skeleton for a model with keypoints, one row per
        request row: unused int32 [B] only sets B; returns {"class_names": string [B, K]} plus
        {"keypoint_names": string [B, Kp], "skeleton": int32 [B, S, 2]}. The batch dimension
        is there because tensorflow_model_server with --enable_batching batches every signature
        and rejects outputs whose first dimension is not the batch."""
        rows = tf.shape(unused)[0]

        def per_row(value):
            return tf.tile(value[None], [rows] + [1] * value.shape.rank)

        outputs = {"class_names": per_row(tf.constant(self.class_names, tf.string))}
        if self.keypoint_names:
            outputs["keypoint_names"] = per_row(tf.constant(self.keypoint_names, tf.string))
            outputs["skeleton"] = per_row(tf.reshape(tf.constant(self.skeleton, tf.int32),
                                                     [-1, 2]))
        return outputs

    def _prepare(self, image, decode):
        """One image (encoded string scalar, or uint8 [h, w, 3]) -> model input parts."""
        if decode:
            image = tf.io.decode_image(image, channels=3, expand_animations=False)
        padded, resized_size, scale = preprocess_image(image, **self.preprocess_args)
        if self.pad_size is None:
            # Ragged in width as well as height: map_fn stacks the images as [B, (h), (w), 3].
            padded = tf.RaggedTensor.from_tensor(padded)
        return padded, tf.cast(resized_size, tf.float32), scale, tf.shape(image)[:2]

    def _detect(self, images, decode):
        checks = [tf.debugging.assert_positive(tf.shape(images)[0],
                                               message="images: the batch is empty")]
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        pad = self.pad_size
        image_spec = (tf.RaggedTensorSpec([None, None, 3], tf.float32, ragged_rank=1)
                      if pad is None else tf.TensorSpec([pad, pad, 3], tf.float32))
        padded, resized_sizes, scales, image_sizes = tf.map_fn(
            lambda image: self._prepare(image, decode), images,
            fn_output_signature=(image_spec, tf.TensorSpec([2], tf.float32),
                                 tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int32)))
        if pad is None:
            # The request's largest resized image, rounded up: zeros (the mean) elsewhere,
            # written in one copy from the ragged batch.
            bounds = tf.cast(padded.bounding_shape(), tf.int32)
            target = padded_size(bounds[None, 1:3], self.size_divisibility)
            padded = padded.to_tensor(shape=tf.stack([bounds[0], target[0], target[1], 3]))
        detections = self.model({"images": padded, "image_sizes": resized_sizes}, training=False)
        num = detections["num_detections"]
        boxes = postprocess.to_original_frame(detections["detection_boxes"], scales, num)
        valid = postprocess.valid_rows(num, tf.shape(boxes)[1])
        masks = tf.where(valid[:, :, None, None], detections["detection_masks"], 0.0)
        outputs = {
            "num_detections": num,
            "detection_boxes": clip_boxes(boxes, image_sizes),
            "detection_classes": tf.where(valid, detections["detection_classes"], 0),
            "detection_scores": tf.where(valid, detections["detection_scores"], 0.0),
            "detection_masks": masks,
            "image_sizes": image_sizes,
        }
        if self.full_masks:
            outputs["detection_masks_full"] = postprocess.full_image_masks(
                masks, boxes, image_sizes, self.mask_threshold)
        if self.encoded_masks is not None:
            outputs["detection_masks_encoded_bytes"] = mask_encoding.encoded_masks(
                masks, boxes, image_sizes, valid, self.mask_threshold, self.encoded_masks)
        if self.keypoint_names:
            keypoints = keypoint_ops.keypoints_to_original_frame(
                detections["detection_keypoints"], scales)
            outputs["detection_keypoints"] = tf.where(valid[:, :, None, None], keypoints, 0.0)
        return outputs
