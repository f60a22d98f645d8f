"""Request batching for the dev server, as tensorflow_model_server's --enable_batching does it.

Concurrent requests to one signature with the same outputs are merged along the 0th dimension
into one model run, and each gets its own rows back. On 2 CPU cores an R-50-FPN run of 4
images of 800 x 1333 costs about 10% less per image than four runs of one
(benchmarks/README.md, the served path), so merged requests raise throughput.

The parameters are TF Serving's `--batching_parameters_file` (a text-format
tensorflow.serving.BatchingParameters), read with protobuf's own text parser, so the file the
production server uses (serving/batching_parameters.txt) works here unchanged. Semantics follow
TF Serving's shared batch scheduler and batching session: a batch is formed when its images
reach max_batch_size or its oldest request has waited batch_timeout_micros; a request of more
images than max_batch_size is refused (INVALID_ARGUMENT); a full queue answers UNAVAILABLE; a
batch is padded up to the next allowed_batch_sizes entry with copies of its first row; inputs
that differ beyond the 0th dimension, or an output without the batch as its 0th dimension, fail
their batch (FAILED_PRECONDITION); a failing run fails every request of its batch.
"""

import collections
import dataclasses
import logging
import threading
import time

import grpc
import numpy as np
from google.protobuf import (descriptor_pb2, descriptor_pool, message_factory, text_format,
                             wrappers_pb2)

from mask_rcnn_tf.serving.status import StatusError

logger = logging.getLogger("mask_rcnn_tf.serving")

# The fields of tensorflow_serving/servables/tensorflow/session_bundle_config.proto's
# BatchingParameters this server implements: (name, field number, type).
_INT64 = ".google.protobuf.Int64Value"
_FIELDS = (("max_batch_size", 1, _INT64), ("batch_timeout_micros", 2, _INT64),
           ("max_enqueued_batches", 3, _INT64), ("num_batch_threads", 4, _INT64),
           ("thread_pool_name", 5, ".google.protobuf.StringValue"),
           ("allowed_batch_sizes", 6, None), ("pad_variable_length_inputs", 7, None))


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """How requests are merged; the defaults are TF Serving's when a field is left out.

    Attributes:
        max_batch_size: int, images (0th-dimension rows) in one run at most.
        batch_timeout_micros: int, how long the oldest request of a batch waits for others
            before the batch runs below max_batch_size; 0: run with whatever is queued.
        max_enqueued_batches: int, the queue holds this many full batches of images; further
            requests are refused with UNAVAILABLE.
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
    field_type = descriptor_pb2.FieldDescriptorProto
    for name, number, type_name in _FIELDS:
        field = message.field.add(name=name, number=number, label=field_type.LABEL_OPTIONAL)
        if type_name:
            field.type, field.type_name = field_type.TYPE_MESSAGE, type_name
        elif name == "allowed_batch_sizes":
            field.type, field.label = field_type.TYPE_INT64, field_type.LABEL_REPEATED
        else:
            field.type = field_type.TYPE_BOOL
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
                         f"{', '.join(name for name, _, _ in _FIELDS)})") from None
    if proto.pad_variable_length_inputs:
        # The server would pad uint8 images of different sizes with zeros, and serving_tensor,
        # which takes each image's size from its tensor, would detect in the padding.
        raise ValueError(f"{path}: pad_variable_length_inputs: true is not supported (it would "
                         f"pad serving_tensor's images with black borders the model takes for "
                         f"image content; see serving/batching_parameters.txt)")
    values = {name: getattr(proto, name).value for name, _, type_name in _FIELDS
              if type_name and proto.HasField(name)}
    if proto.allowed_batch_sizes:
        values["allowed_batch_sizes"] = tuple(proto.allowed_batch_sizes)
    try:
        return BatchingParameters(**values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


class _Task:
    """One request waiting in the queue: its inputs, and where its answer goes."""

    def __init__(self, key, inputs):
        sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
        if None in sizes:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              "Batching session Run() input tensors must have at least one "
                              "dimension")
        if len(sizes) != 1:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Batching session Run() input tensors must have equal "
                              f"0th-dimension size, got {sorted(sizes)}")
        self.key = key
        self.inputs = inputs
        self.size = sizes.pop()
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.outputs = None
        self.error = None


class Batcher:
    """Merges concurrent requests into batched runs on background threads.

    Args:
        run: run(key, inputs) -> dict of output name to NumPy array whose 0th dimension is the
            batch; key is the key the requests were submitted under; inputs maps each input
            alias to a NumPy array. Raises StatusError (or anything) for a failed run.
        parameters: BatchingParameters.
        run_slots: threading semaphore a batch thread holds while it forms and runs a batch,
            so batches are formed only when a run can start.
        num_threads: int, batch threads when parameters.num_batch_threads is None.
    """

    def __init__(self, run, parameters, run_slots, num_threads=1):
        self._run = run
        self._parameters = parameters
        self._run_slots = run_slots
        self._queue = collections.deque()
        self._queued_rows = collections.Counter()  # per key
        self._changed = threading.Condition()
        self._closed = False
        self.batch_sizes = collections.Counter()  # rows run (padding excluded) -> batches
        count = parameters.num_batch_threads or num_threads
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"{parameters.thread_pool_name}_{i}")
                         for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, key, inputs):
        """Queues one request and waits for its rows of the batched run.

        Args:
            key: hashable; only requests with equal keys share a batch (the signature and its
                requested outputs, as TF Serving keys its batching queues).
            inputs: dict of input alias to NumPy array, all with the same 0th dimension.

        Returns:
            dict of output name to this request's rows.

        Raises:
            StatusError: INVALID_ARGUMENT for a request larger than max_batch_size,
                UNAVAILABLE for a full queue or a closed batcher, or the run's error.
        """
        task = _Task(key, inputs)
        limit = self._parameters.max_batch_size
        if task.size > limit:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Task size {task.size} is larger than maximum input batch size "
                              f"{limit}")
        with self._changed:
            if self._closed:
                raise StatusError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            if self._queued_rows[key] + task.size > limit * self._parameters.max_enqueued_batches:
                raise StatusError(grpc.StatusCode.UNAVAILABLE,
                                  "The batch scheduling queue to which this session was "
                                  "submitted is full")
            self._queue.append(task)
            self._queued_rows[key] += task.size
            self._changed.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def close(self):
        """Stops the batch threads once the queue is empty; later submits get UNAVAILABLE."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _work(self):
        while True:
            with self._run_slots:
                batch = self._next_batch()
                if batch is None:
                    return
                self._run_batch(batch)

    def _next_batch(self):
        """The tasks of the next batch, oldest first; None once closed and empty."""
        limit = self._parameters.max_batch_size
        timeout = self._parameters.batch_timeout_micros / 1e6
        with self._changed:
            while True:
                if self._queue:
                    key = self._queue[0].key
                    wait = self._queue[0].enqueued + timeout - time.monotonic()
                    if self._queued_rows[key] >= limit or wait <= 0 or self._closed:
                        return self._take(key, limit)
                    self._changed.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._changed.wait()

    def _take(self, key, limit):
        """Removes the oldest tasks under `key` that fit in `limit` rows (caller holds the lock)."""
        batch, rows = [], 0
        for task in list(self._queue):
            if task.key == key and rows + task.size <= limit:
                batch.append(task)
                rows += task.size
                self._queue.remove(task)
        self._queued_rows[key] -= rows
        return batch

    def _run_batch(self, batch):
        rows = sum(task.size for task in batch)
        self.batch_sizes[rows] += 1
        try:
            inputs = _merged_inputs(batch, self._padded_size(rows))
            outputs = self._run(batch[0].key, inputs)
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != len(next(iter(inputs.values()))):
                    # TF Serving's code for it too; MaskRCNNClient.class_names expects it.
                    raise StatusError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Batched output tensor's 0th dimension does not equal the sum of the "
                        f"0th dimension sizes of the input tensors: output '{name}' has shape "
                        f"{list(array.shape)}")
            start = 0
            for task in batch:
                task.outputs = {name: array[start:start + task.size]
                                for name, array in outputs.items()}
                start += task.size
        except Exception as err:  # The run failed: every request of the batch gets its error.
            for task in batch:
                task.error = err
        for task in batch:
            task.done.set()

    def _padded_size(self, rows):
        return next((size for size in self._parameters.allowed_batch_sizes if size >= rows),
                    rows)


def _merged_inputs(batch, padded_size):
    """The batch's inputs concatenated along the 0th dimension, padded to padded_size rows
    with copies of the first row."""
    merged = {}
    for alias in batch[0].inputs:
        arrays = [task.inputs[alias] for task in batch]
        if len({array.shape[1:] for array in arrays}) > 1:
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"input '{alias}' has different shapes beyond the 0th dimension in requests "
                f"batched together ({sorted({tuple(a.shape) for a in arrays})}); TF Serving "
                f"batches them only with pad_variable_length_inputs: send requests of one "
                f"shape, or encoded images to serving_default")
        rows = sum(len(array) for array in arrays)
        if padded_size > rows:
            arrays.append(np.repeat(arrays[0][:1], padded_size - rows, axis=0))
        merged[alias] = np.concatenate(arrays, axis=0)
    return merged
