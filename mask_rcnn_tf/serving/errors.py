"""Exceptions of the serving client: one type per way a call to TF Serving can fail.

Every exception carries the gRPC status code and the server's own message, so an application
can branch on the type and still log what the server said.
"""

import grpc


class ServingError(Exception):
    """A call to the model server failed.

    Attributes:
        code: grpc.StatusCode, or None for failures found on the client before any call.
        details: str, the server's (or gRPC's) message.
    """

    def __init__(self, message, code=None, details=""):
        super().__init__(message)
        self.code = code
        self.details = details


class ModelNotFoundError(ServingError):
    """NOT_FOUND: the server has no such model name or version."""


class InvalidRequestError(ServingError):
    """INVALID_ARGUMENT or FAILED_PRECONDITION: the server refused the request's content."""


class SignatureNotFoundError(InvalidRequestError):
    """FAILED_PRECONDITION: the model has no signature of the requested name."""


class ServerUnavailableError(ServingError):
    """UNAVAILABLE after every retry: no server answering at the target, or it is shutting down."""


class DeadlineExceededError(ServingError):
    """DEADLINE_EXCEEDED: no answer within the call's timeout."""


class ResourceExhaustedError(ServingError):
    """RESOURCE_EXHAUSTED: a message over the size limit, or a full server queue."""


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}


def error_class(code, details):
    """The ServingError subclass for a status code and the server's message."""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        # tensorflow_model_server gives this code to an unknown signature key, and to little else.
        return SignatureNotFoundError if "signature" in details.lower() else InvalidRequestError
    return _BY_CODE.get(code, ServingError)


def error_from_rpc(error, call, target):
    """The ServingError subclass for a failed gRPC call.

    Args:
        error: grpc.RpcError raised by a stub call (also a grpc.Call: code() and details()).
        call: str naming the call for the message, e.g. "Predict(model 'shapes')".
        target: str, the server address.

    Returns:
        ServingError (a subclass where the status code has one); its message reads
        "<call> at <target> failed: <CODE>: <server message>".
    """
    code = error.code()
    details = error.details() or ""
    kind = error_class(code, details)
    return kind(f"{call} at {target} failed: {code.name}: {details}", code=code, details=details)
