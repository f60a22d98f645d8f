"""TF Serving's batching parameters, as `--batching_parameters_file` gives them.

The file is a text-format tensorflow.serving.BatchingParameters, read with protobuf's own text
parser, so the file the production server uses (serving/batching_parameters.txt) works for the
dev server unchanged; the fields the dev server does not implement are refused by name.
"""

import dataclasses

from google.protobuf import (descriptor_pb2, descriptor_pool, message_factory, text_format,
                             wrappers_pb2)

# The fields of tensorflow_serving/servables/tensorflow/session_bundle_config.proto's
# BatchingParameters this server implements: (name, field number, label, type, message type).
_FIELD = descriptor_pb2.FieldDescriptorProto
_INT64 = (_FIELD.LABEL_OPTIONAL, _FIELD.TYPE_MESSAGE, ".google.protobuf.Int64Value")
_FIELDS = (("max_batch_size", 1, *_INT64), ("batch_timeout_micros", 2, *_INT64),
           ("max_enqueued_batches", 3, *_INT64), ("num_batch_threads", 4, *_INT64),
           ("thread_pool_name", 5, _FIELD.LABEL_OPTIONAL, _FIELD.TYPE_MESSAGE,
            ".google.protobuf.StringValue"),
           ("allowed_batch_sizes", 6, _FIELD.LABEL_REPEATED, _FIELD.TYPE_INT64, None),
           ("pad_variable_length_inputs", 7, _FIELD.LABEL_OPTIONAL, _FIELD.TYPE_BOOL, None))


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """How requests are merged; the defaults are TF Serving's when a field is left out.

    Attributes:
        max_batch_size: int, images (0th-dimension rows) in one run at most.
        batch_timeout_micros: int, how long the oldest request of a batch waits for others
            before the batch runs below max_batch_size; 0: run with whatever is queued.
        max_enqueued_batches: int, batches waiting per signature at most; a request that
            would open one more is refused with UNAVAILABLE.
        num_batch_threads: int, batches run at once (the server's --max-concurrent-runs caps it
            too); None: as many as --max-concurrent-runs.
        thread_pool_name: str, the batch threads' name prefix.
        allowed_batch_sizes: tuple of int, increasing, the last equal to max_batch_size; a batch
            is padded up to the next of them. Empty: any size.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int | None = None
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple = ()

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"batching parameter {name} must be at least 1, got {value}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batching parameter batch_timeout_micros must be at least 0, got "
                             f"{self.batch_timeout_micros}")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[0] < 1
                      or sizes[-1] != self.max_batch_size):
            raise ValueError(f"batching parameter allowed_batch_sizes must increase and end at "
                             f"max_batch_size ({self.max_batch_size}), got {sizes}")


def _message_class():
    """The BatchingParameters protobuf message class, built from its field list.

    tensorflow-serving-api ships the API protos but not session_bundle_config.proto.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="mask_rcnn_tf/serving/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=[wrappers_pb2.DESCRIPTOR.name])
    message = file.message_type.add(name="BatchingParameters")
    for name, number, label, field_type, type_name in _FIELDS:
        field = message.field.add(name=name, number=number, label=label, type=field_type)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def load_batching_parameters(path):
    """Reads a TF Serving batching parameters file (text-format BatchingParameters).

    Args:
        path: str or os.PathLike.

    Returns:
        BatchingParameters, with TF Serving's defaults for the fields left out.

    Raises:
        OSError: the file cannot be read.
        ValueError: naming the file: text that does not parse, a field this server does not
            implement, a value out of range, or pad_variable_length_inputs: true.
    """
    with open(path) as f:
        text = f.read()
    proto = _message_class()()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        raise ValueError(f"{path}: {err} (mask-rcnn serve reads "
                         f"{', '.join(field[0] for field in _FIELDS)})") from None
    if proto.pad_variable_length_inputs:
        # The server would pad uint8 images of different sizes with zeros, and serving_tensor,
        # which takes each image's size from its tensor, would detect in the padding.
        raise ValueError(f"{path}: pad_variable_length_inputs: true is not supported (it would "
                         f"pad serving_tensor's images with black borders the model takes for "
                         f"image content; see serving/batching_parameters.txt)")
    values = {name: getattr(proto, name).value for name, _, _, _, type_name in _FIELDS
              if type_name and proto.HasField(name)}
    if proto.allowed_batch_sizes:
        values["allowed_batch_sizes"] = tuple(proto.allowed_batch_sizes)
    try:
        return BatchingParameters(**values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
