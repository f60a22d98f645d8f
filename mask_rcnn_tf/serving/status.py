"""The dev server's request failure: a gRPC status code and one readable line."""


class StatusError(Exception):
    """A request failure with the gRPC status code the server answers it with.

    REST answers map the code to tensorflow_model_server's HTTP status (rest_server.py).
    """

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message
