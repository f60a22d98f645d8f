"""NumPy arrays to and from the JSON of TF Serving's REST API (NumPy and the standard library).

As tensorflow_model_server encodes them: numbers as (nested) JSON lists; a string tensor's items
as JSON strings, except binary ones, which travel as {"b64": "<base64>"} objects: a client may
send any string input so, and the server sends so every string output whose alias ends in
"_bytes" (the export names its PNG masks detection_masks_encoded_bytes for this reason).
"""

import base64

import numpy as np

BYTES_SUFFIX = "_bytes"


def to_json(array, binary=False):
    """A NumPy array (or one row of it) as a JSON-ready value.

    Args:
        array: NumPy array; dtype object (bytes items) for strings.
        binary: strings go as {"b64": ...} (a server does so for aliases ending in "_bytes"),
            else as text (UTF-8, undecodable bytes replaced).

    Returns:
        nested lists of Python numbers / str / dict, or a scalar.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "OSU":
        return array.tolist()
    def encode(item):
        item = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        if binary:
            return {"b64": base64.b64encode(item).decode("ascii")}
        return item.decode("utf-8", "replace")

    if not array.size:
        return array.tolist()
    return np.vectorize(encode, otypes=[object])(array).tolist()


def from_json(value, dtype):
    """The NumPy array of a JSON value sent for a tensor of `dtype`.

    Args:
        value: nested lists of numbers, or for strings of str and {"b64": str} items.
        dtype: np.dtype of the tensor, or None for a string tensor.

    Returns:
        np.ndarray; dtype object with bytes items for strings.

    Raises:
        ValueError: ragged lists, a value of the wrong kind, bad base64 (the message says which).
    """
    if dtype is None:
        decoded = _strings(value)
        array = np.empty(_shape(decoded), object)
        array[...] = decoded
        return array
    if _has_strings(value):
        raise ValueError(f"expected numbers of type {np.dtype(dtype).name}, got strings")
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"not a regular array of {np.dtype(dtype).name}: {err}") from None


def _strings(value):
    """Nested lists with every str / {"b64"} item turned into bytes."""
    if isinstance(value, list):
        return [_strings(item) for item in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ValueError(f"a binary value must be {{\"b64\": \"<base64>\"}}, got "
                             f"an object with keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as err:
            raise ValueError(f"bad base64 in a b64 value: {err}") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")


def _shape(nested):
    """Shape of regular nested lists (bytes leaves); ValueError when ragged."""
    if not isinstance(nested, list):
        return ()
    inner = {_shape(item) for item in nested}
    if len(inner) > 1:
        raise ValueError("lists of different lengths at the same depth (a ragged tensor)")
    return (len(nested),) + (inner.pop() if inner else ())


def _has_strings(value):
    if isinstance(value, list):
        return any(_has_strings(item) for item in value)
    return isinstance(value, (str, dict))
