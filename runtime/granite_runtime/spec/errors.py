"""Errors the runtime raises for bad models or requests.

The runtime sits below the control plane and cannot import its `GkitError`; the CLI maps
`ModelLoadError` to a check failure (exit 1), `SettingError` to a usage error (exit 2), and
`RequestError` becomes an OpenAI error body.
"""


class ModelLoadError(Exception):
    """A checkpoint that cannot be loaded: the message names the file and the reason."""


class SettingError(Exception):
    """An engine setting (a GKIT_* variable) the runtime cannot use: the message names it."""


class RequestError(Exception):
    """A request the engine refuses; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
