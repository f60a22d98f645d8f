"""TensorProto <-> NumPy without TensorFlow, checked against TensorFlow's own converters."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from mask_rcnn_tf.serving.tensors import dtype_name, make_ndarray, make_tensor_proto

NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8,
           np.uint16, np.uint32, np.uint64, np.bool_]


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("use_tensor_content", [True, False])
def test_numeric_round_trip_matches_tensorflow(dtype, use_tensor_content):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(2, 3, 4)) * 50).astype(dtype)
    proto = make_tensor_proto(array, use_tensor_content=use_tensor_content)
    assert proto.dtype == tf.dtypes.as_dtype(dtype).as_datatype_enum
    # TensorFlow reads what we write, and we read what TensorFlow writes.
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    np.testing.assert_array_equal(make_ndarray(tf.make_tensor_proto(array)), array)
    result = make_ndarray(proto)
    assert result.dtype == array.dtype
    np.testing.assert_array_equal(result, array)


def test_strings_round_trip():
    array = np.array([b"\x89PNG\x00\x01", "caf\u00e9", b""], dtype=object)
    proto = make_tensor_proto(array)
    assert proto.dtype == types_pb2.DT_STRING
    assert list(tf.make_ndarray(proto)) == [b"\x89PNG\x00\x01", "caf\u00e9".encode(), b""]
    assert list(make_ndarray(tf.make_tensor_proto([b"a", b"bc"]))) == [b"a", b"bc"]


def test_short_typed_fields_repeat_the_last_value_like_tensorflow():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    proto.float_val.extend([1.5, 2.5])
    np.testing.assert_array_equal(make_ndarray(proto), tf.make_ndarray(proto))
    np.testing.assert_array_equal(make_ndarray(proto), [[1.5, 2.5, 2.5], [2.5, 2.5, 2.5]])
    del proto.float_val[:]
    np.testing.assert_array_equal(make_ndarray(proto), np.zeros((2, 3), np.float32))


def test_empty_tensor():
    array = np.zeros((0, 5, 5, 3), np.uint8)
    result = make_ndarray(make_tensor_proto(array))
    assert result.shape == (0, 5, 5, 3) and result.dtype == np.uint8


@pytest.mark.parametrize("mutate, message", [
    (lambda p: setattr(p, "tensor_content", p.tensor_content[:-1]), "tensor_content has 23 bytes"),
    (lambda p: p.tensor_shape.dim.add(size=-1), "not fully defined"),
    (lambda p: setattr(p.tensor_shape, "unknown_rank", True), "not fully defined"),
    (lambda p: setattr(p, "dtype", types_pb2.DT_COMPLEX64), "complex64 is not supported"),
])
def test_malformed_protos_raise(mutate, message):
    proto = make_tensor_proto(np.arange(6, dtype=np.float32))
    mutate(proto)
    with pytest.raises(ValueError, match=message):
        make_ndarray(proto)


def test_too_many_values_raise():
    proto = make_tensor_proto(np.arange(4, dtype=np.int32), use_tensor_content=False)
    proto.tensor_shape.dim[0].size = 3
    with pytest.raises(ValueError, match="holds 4 values, its shape holds 3"):
        make_ndarray(proto)


def test_unsupported_numpy_dtype_and_names():
    with pytest.raises(TypeError, match="complex64"):
        make_tensor_proto(np.zeros(2, np.complex64))
    assert dtype_name(types_pb2.DT_STRING) == "string"
    assert dtype_name(types_pb2.DT_UINT8) == "uint8"
    assert dtype_name(types_pb2.DT_RESOURCE) == "resource"
