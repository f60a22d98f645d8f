"""Request batching for the dev server, as tensorflow_model_server's --enable_batching does it.

Concurrent requests to one signature with the same outputs are merged along the 0th dimension
into one model run, and each gets its own rows back. On 2 CPU cores an R-50-FPN run of 4
images of 800 x 1333 costs about 13% less per image than four runs of one
(benchmarks/README.md, request batching), so requests that queue behind a run go faster
together.

The rules are TF Serving's shared batch scheduler and batching session, with the parameters of
batching_parameters.py: each signature (and set of outputs) has a queue of batches; a request
joins the open batch if it fits in max_batch_size rows, else opens the next one, refused with
UNAVAILABLE when max_enqueued_batches are waiting; a batch runs when it is closed (full, or a
later one was opened) or its first request has waited batch_timeout_micros; a request of more
rows than max_batch_size is refused (INVALID_ARGUMENT); a batch is padded up to the next
allowed_batch_sizes entry with copies of a row; inputs that differ beyond the 0th dimension, or
an output without the batch as its 0th dimension, fail their batch (FAILED_PRECONDITION); a
failing run fails every request of its batch. Status messages are TF Serving's where a client
could match on them.
"""

import collections
import logging
import threading
import time

import grpc
import numpy as np

from mask_rcnn_tf.serving.status import StatusError

logger = logging.getLogger("mask_rcnn_tf.serving")


class _Task:
    """One request waiting in the queue: its inputs, and where its answer goes."""

    def __init__(self, inputs):
        sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
        if None in sizes:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              "Batching Run() input tensors must have at least one dimension")
        if len(sizes) != 1:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              "Batching Run() input tensors must have equal 0th-dimension size")
        self.inputs = inputs
        self.size = sizes.pop()
        self.done = threading.Event()
        self.outputs = None
        self.error = None

    def fail(self, code, message):
        self.error = StatusError(code, message)
        self.done.set()


class _Batch:
    """Tasks of one key that run together, oldest first."""

    def __init__(self, key, task):
        self.key = key
        self.tasks = [task]
        self.rows = task.size
        self.opened = time.monotonic()


class Batcher:
    """Merges concurrent requests into batched runs on background threads.

    Args:
        run: run(key, inputs) -> dict of output name to NumPy array whose 0th dimension is the
            batch; key is the key the requests were submitted under; inputs maps each input
            alias to a NumPy array. Raises StatusError (or anything) for a failed run.
        parameters: batching_parameters.BatchingParameters.
        run_slots: threading semaphore a batch thread holds while it picks and runs a batch,
            so a batch is picked only when a run can start and requests keep joining it while
            the model is busy.
        num_threads: int, batch threads (at most the run slots: more would only wait).
    """

    def __init__(self, run, parameters, run_slots, num_threads=1):
        self._run = run
        self._parameters = parameters
        self._run_slots = run_slots
        self._queues = {}  # key -> deque of _Batch, oldest first
        self._changed = threading.Condition()
        self._closed = False
        self.batch_sizes = collections.Counter()  # rows run (padding excluded) -> batches
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"{parameters.thread_pool_name}_{i}")
                         for i in range(num_threads)]
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
            StatusError: INVALID_ARGUMENT for a request larger than max_batch_size or inputs
                without a common 0th dimension, UNAVAILABLE for a full queue or a closed
                batcher, or the run's error.
        """
        task = _Task(inputs)
        limit = self._parameters.max_batch_size
        if task.size > limit:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Task size {task.size} is larger than maximum input batch size "
                              f"{limit}")
        with self._changed:
            if self._closed:
                raise StatusError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            batches = self._queues.setdefault(key, collections.deque())
            if batches and batches[-1].rows + task.size <= limit:
                batches[-1].tasks.append(task)
                batches[-1].rows += task.size
            elif len(batches) >= self._parameters.max_enqueued_batches:
                raise StatusError(grpc.StatusCode.UNAVAILABLE,
                                  "The batch scheduling queue to which this task was submitted "
                                  "is full")
            else:
                batches.append(_Batch(key, task))
            self._changed.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def close(self):
        """Fails the requests still queued with UNAVAILABLE, lets the running batches finish
        and stops the batch threads; later submits get UNAVAILABLE. Called after the server's
        grace period, when nobody waits for the queued requests any more."""
        with self._changed:
            self._closed = True
            for batches in self._queues.values():
                for batch in batches:
                    for task in batch.tasks:
                        task.fail(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            self._queues.clear()
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
        """Removes and returns the next batch to run; None once closed.

        A batch is ready when it is full, a later batch of its key exists, or its first request
        has waited batch_timeout_micros; of the ready ones, the one opened first runs.
        """
        limit = self._parameters.max_batch_size
        timeout = self._parameters.batch_timeout_micros / 1e6
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                heads = [batches[0] for batches in self._queues.values()]
                ready = [b for b in heads if b.rows >= limit or b.opened + timeout <= now
                         or len(self._queues[b.key]) > 1]
                if ready:
                    batch = min(ready, key=lambda b: b.opened)
                    batches = self._queues[batch.key]
                    batches.popleft()
                    if not batches:
                        del self._queues[batch.key]
                    self.batch_sizes[batch.rows] += 1
                    return batch
                wait = min((b.opened + timeout - now for b in heads), default=None)
                self._changed.wait(wait)
            return None

    def _run_batch(self, batch):
        try:
            padded = self._padded_size(batch.rows)
            outputs = self._run(batch.key, _merged_inputs(batch.tasks, padded))
            start = 0
            for task in batch.tasks:
                task.outputs = {name: _rows(name, array, padded, start, task.size)
                                for name, array in outputs.items()}
                start += task.size
        except StatusError as err:  # Every request of the batch gets the run's error.
            for task in batch.tasks:
                task.error = StatusError(err.code, err.message)
        except Exception as err:  # A bug: reported to each caller as INTERNAL, logged once.
            logger.exception("batched run failed")
            for task in batch.tasks:
                task.error = StatusError(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        finally:
            for task in batch.tasks:
                task.done.set()

    def _padded_size(self, rows):
        return next((size for size in self._parameters.allowed_batch_sizes if size >= rows),
                    rows)


def _rows(name, array, batch_rows, start, size):
    """Rows [start, start + size) of a batched output; FAILED_PRECONDITION (TF Serving's code,
    which MaskRCNNClient.class_names expects) for an output without the batch dimension."""
    if array.ndim == 0:
        raise StatusError(grpc.StatusCode.FAILED_PRECONDITION,
                          f"Batched output tensor has 0 dimensions: output '{name}'")
    if array.shape[0] != batch_rows:
        raise StatusError(grpc.StatusCode.FAILED_PRECONDITION,
                          f"Batched output tensor's 0th dimension does not equal the sum of the "
                          f"0th dimension sizes of the input tensors: output '{name}' has shape "
                          f"{list(array.shape)}")
    return array[start:start + size]


def _merged_inputs(tasks, padded_size):
    """The tasks' inputs concatenated along the 0th dimension, padded to padded_size rows with
    copies of the last task's first row (as TF Serving pads)."""
    merged = {}
    for alias in tasks[0].inputs:
        arrays = [task.inputs[alias] for task in tasks]
        if len({array.shape[1:] for array in arrays}) > 1:
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Tensors with name '{alias}' from different tasks have different shapes and "
                f"padding is turned off ({sorted({tuple(a.shape) for a in arrays})}): send "
                f"requests of one shape, or encoded images to serving_default")
        rows = sum(len(array) for array in arrays)
        if padded_size > rows:
            arrays.append(np.repeat(arrays[-1][:1], padded_size - rows, axis=0))
        merged[alias] = np.concatenate(arrays, axis=0)
    return merged
