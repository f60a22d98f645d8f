"""Exception types the `mask-rcnn` command reports as one line instead of a traceback."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the last good checkpoint."""


# ValueError covers ConfigError and the data readers' errors; OSError covers missing files.
# Set MASK_RCNN_DEBUG=1 to see the traceback of any of them.
USER_ERRORS = (ValueError, OSError, TrainingDiverged)
