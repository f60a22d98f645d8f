"""Images as a request carries them (encoded bytes, or uint8 RGB pixels), and the encoded masks
an answer carries (NumPy, PIL and pycocotools only)."""

import io
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_image(image, index):
    """Encoded bytes of one request image.

    Args:
        image: a file path (str or os.PathLike; its bytes are sent as they are), encoded bytes,
            or a NumPy uint8 [h, w, 3] RGB array (encoded to PNG, lossless).
        index: int, the image's position in the caller's list, for error messages.

    Returns:
        bytes.

    Raises:
        FileNotFoundError, TypeError, ValueError: naming the image by index.
    """
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"image {index}: {os.fspath(image)}: file not found") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buffer = io.BytesIO()
    Image.fromarray(_checked_array(image, index)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_pixels(image, index):
    """Pixels of one request image.

    Args:
        image: a file path, encoded bytes (both decoded here with PIL), or a NumPy uint8
            [h, w, 3] RGB array (returned as it is).
        index: int, the image's position in the caller's list, for error messages.

    Returns:
        uint8 [h, w, 3] NumPy array, RGB.

    Raises:
        FileNotFoundError, TypeError, ValueError: naming the image by index.
    """
    if isinstance(image, np.ndarray):
        return _checked_array(image, index)
    data = encode_image(image, index)
    try:
        with Image.open(io.BytesIO(data)) as decoded:
            return np.asarray(decoded.convert("RGB"))
    except Exception as err:  # PIL raises many types for data that is not an image.
        raise ValueError(f"image {index}: does not decode as an image ({err})") from None


def decode_mask(data, image_size):
    """A detection's full-image mask from the export's detection_masks_encoded_bytes.

    Args:
        data: bytes: a PNG of uint8 [h, w] (0 / 1; b"" for a mask with no pixel), or COCO's
            compressed RLE counts of an [h, w] mask (export/mask_encoding.py).
        image_size: (h, w) of the detection's image.

    Returns:
        bool [h, w] NumPy array.

    Raises:
        ValueError: data that is neither, or not of the image's size.
    """
    if not data:
        return np.zeros(image_size, bool)
    if data.startswith(_PNG_SIGNATURE):
        try:
            with Image.open(io.BytesIO(data)) as decoded:
                mask = np.asarray(decoded)
        except Exception as err:  # PIL raises many types for data that is not an image.
            raise ValueError(f"encoded mask does not decode as a PNG ({err})") from None
    else:
        try:
            mask = mask_utils.decode({"size": [int(v) for v in image_size], "counts": data})
        except Exception as err:  # pycocotools raises bare exceptions for bad strings.
            raise ValueError(f"encoded mask is neither a PNG nor COCO RLE ({err})") from None
    if mask.shape != tuple(image_size):
        raise ValueError(f"encoded mask is {list(mask.shape)}, its image is {list(image_size)}")
    return mask > 0


def _checked_array(image, index):
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a path, bytes or a NumPy array, "
                        f"got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: arrays must be uint8 [h, w, 3] RGB, "
                         f"got {image.dtype} {list(image.shape)}")
    return image
