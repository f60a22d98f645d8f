"""NumPy arrays to and from TensorFlow's TensorProto, the tensor format of TF Serving's gRPC API.

Written with NumPy alone so the client needs no TensorFlow API (the proto classes ship in the
tensorflow wheel, but only their generated code runs here). Both encodings of a TensorProto are
read: raw little-endian bytes in `tensor_content`, and the typed repeated fields (`float_val`,
`int_val`, ...) that tensorflow_model_server writes by default. In the typed fields, fewer
values than the shape holds means the last value repeats (TensorFlow's own rule), and none at all
means zeros.
"""

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# DataType -> (NumPy dtype, TensorProto field holding the values when tensor_content is empty).
# Types narrower than 32 bits travel widened in int_val; half travels as its bits in half_val.
_DTYPES = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
}
_DATA_TYPES = {numpy_dtype: data_type for data_type, (numpy_dtype, _) in _DTYPES.items()}


def dtype_name(data_type):
    """'uint8', 'string', ... for a DataType enum value (for error messages)."""
    if data_type == types_pb2.DT_STRING:
        return "string"
    if data_type in _DTYPES:
        return _DTYPES[data_type][0].name
    return types_pb2.DataType.Name(data_type).removeprefix("DT_").lower()


def numpy_dtype(data_type):
    """The NumPy dtype of a numeric DataType enum value.

    Raises:
        ValueError: a DataType without one here (strings included).
    """
    if data_type not in _DTYPES:
        raise ValueError(f"tensor dtype {dtype_name(data_type)} is not supported")
    return _DTYPES[data_type][0]


def shape_of(tensor_shape):
    """A TensorShapeProto as a list of ints (-1 for an unknown size), or None for unknown rank."""
    if tensor_shape.unknown_rank:
        return None
    return [dim.size for dim in tensor_shape.dim]


def make_tensor_proto(array, use_tensor_content=True):
    """TensorProto holding `array`.

    Args:
        array: NumPy array (or nested lists) of a dtype in the table above, or of bytes / str
            (str is UTF-8 encoded) for DT_STRING.
        use_tensor_content: bool; True packs numbers as raw bytes (compact, fast to build), False
            writes the typed repeated fields as tensorflow_model_server does. Strings always go
            to string_val.

    Returns:
        tensorflow.TensorProto.

    Raises:
        TypeError: the dtype has no TensorFlow DataType here.
    """
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto(tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]))
    if array.dtype.kind in "SUO":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(
            value.encode("utf-8") if isinstance(value, str) else bytes(value)
            for value in array.ravel())
        return proto
    if array.dtype not in _DATA_TYPES:
        raise TypeError(f"make_tensor_proto: dtype {array.dtype} has no TensorFlow DataType")
    proto.dtype = _DATA_TYPES[array.dtype]
    if use_tensor_content:
        proto.tensor_content = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    elif array.dtype == np.float16:
        proto.half_val.extend(array.ravel().view(np.uint16).tolist())
    else:
        getattr(proto, _DTYPES[proto.dtype][1]).extend(array.ravel().tolist())
    return proto


def make_ndarray(proto):
    """NumPy array held by a TensorProto (either encoding).

    Args:
        proto: tensorflow.TensorProto with a known shape.

    Returns:
        np.ndarray of the proto's shape; dtype object (bytes items) for DT_STRING.

    Raises:
        ValueError: unknown rank, a negative size, a DataType not in the table, or a value count
            or byte length that does not fit the shape (the message says which).
    """
    shape = shape_of(proto.tensor_shape)
    if shape is None or any(size < 0 for size in shape):
        raise ValueError(f"tensor shape {shape} is not fully defined")
    count = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == types_pb2.DT_STRING:
        return _fill(np.array(list(proto.string_val), dtype=object), count, b"").reshape(shape)
    if proto.dtype not in _DTYPES:
        raise ValueError(f"tensor dtype {dtype_name(proto.dtype)} is not supported")
    numpy_dtype, field = _DTYPES[proto.dtype]
    if proto.tensor_content:
        wire_dtype = numpy_dtype.newbyteorder("<")
        if len(proto.tensor_content) != count * wire_dtype.itemsize:
            raise ValueError(f"tensor_content has {len(proto.tensor_content)} bytes, shape "
                             f"{shape} of {numpy_dtype.name} needs {count * wire_dtype.itemsize}")
        values = np.frombuffer(proto.tensor_content, wire_dtype).astype(numpy_dtype)
    elif proto.dtype == types_pb2.DT_HALF:
        values = np.array(proto.half_val, np.uint16).view(np.float16)
    else:
        values = np.array(getattr(proto, field)).astype(numpy_dtype, copy=False)
    return _fill(values, count, 0).astype(numpy_dtype, copy=False).reshape(shape)


def _fill(values, count, empty_value):
    """Applies TensorFlow's rule for typed fields shorter than the shape (see module doc)."""
    if len(values) == count:
        return values
    if len(values) > count:
        raise ValueError(f"tensor holds {len(values)} values, its shape holds {count}")
    last = values[-1] if len(values) else empty_value
    filled = np.empty(count, values.dtype if len(values) else object)
    filled[:len(values)] = values
    filled[len(values):] = last
    return filled
