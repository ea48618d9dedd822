"""The one error hierarchy of tfstream.

Every failure a caller can see is a `TfstreamError` with a stable `code`. The
code, not the class or the message, is the contract: it crosses Kafka as data
(`to_dict`/`from_dict`), the bridge turns `http_status` into the HTTP status,
and the consumer's `pipeline.verdict` reads `retriable`, `client_error` and
`dead_letter` to decide whether a failed request is tried again, copied to the
dead-letter queue, or only answered.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TfstreamError(Exception):
    """Root of every error tfstream reports to a caller."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    #: The same request may succeed later (broker outage, model still loading).
    retriable: ClassVar[bool] = False
    #: The request itself is at fault: answering it again gives the same error.
    client_error: ClassVar[bool] = False
    #: A request that ends with this error is copied to the dead-letter queue for an
    #: operator; off for outcomes that are expected in normal operation.
    dead_letter: ClassVar[bool] = True

    _by_code: ClassVar[dict[str, type[TfstreamError]]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(
        cls,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retriable: bool | None = None,
        client_error: bool | None = None,
        dead_letter: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """A subclass states what differs from its parent in its class line
        (`class Superseded(TfstreamError, code="superseded", http_status=409)`),
        and is registered under its code for `from_dict`. A subclass that keeps
        its parent's code is a variant the receiver need not tell apart: the
        code's own class stays registered."""
        super().__init_subclass__(**kwargs)
        given = {
            "code": code,
            "http_status": http_status,
            "retriable": retriable,
            "client_error": client_error,
            "dead_letter": dead_letter,
        }
        for name, value in given.items():
            if value is not None:
                setattr(cls, name, value)
        if "code" in cls.__dict__:
            TfstreamError._by_code[cls.code] = cls

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TfstreamError:
        """Rebuild an error received as data; unknown codes keep their code."""
        code = str(data.get("code") or "internal_error")
        message = str(data.get("message") or code)
        cls = TfstreamError._by_code.get(code)
        if cls is not None:
            return cls(message)
        error = TfstreamError(message)
        error.code = code  # type: ignore[misc]  # keep a newer peer's code intact
        return error

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


TfstreamError._by_code[TfstreamError.code] = TfstreamError


# -- the request is at fault -------------------------------------------------


class InvalidImage(TfstreamError, code="invalid_image", http_status=400, client_error=True):
    """The payload is empty, corrupt, or not an image format we decode."""


class ImageTooLarge(TfstreamError, code="image_too_large", http_status=413, client_error=True):
    """Too many bytes or pixels: refused before it can exhaust memory."""


class InvalidCameraConfig(
    TfstreamError, code="invalid_camera_config", http_status=422, client_error=True
):
    """A camera's configuration (the gateway's cameras file, or the zones and lines a
    worker reads) does not parse or breaks a rule: one code for both, since a camera
    is one thing to its operator."""


class InvalidRequest(TfstreamError, code="invalid_request", http_status=422, client_error=True):
    """A missing or malformed field or header (correlation id, overrides...)."""


class RequestTooLarge(TfstreamError, code="request_too_large", http_status=413, client_error=True):
    """An HTTP body over the bridge's limit, refused before it is read whole."""


class ModelNotFound(TfstreamError, code="model_not_found", http_status=404, client_error=True):
    """No model of that name or hash, or a name that could escape the repository."""


class DeadlineExceeded(
    TfstreamError, code="deadline_exceeded", http_status=504, client_error=True, dead_letter=False
):
    """The request's deadline passed before it could run; it was not run.

    Not copied to the dead-letter queue: an expired camera frame is expected,
    not a fault."""


class Superseded(
    TfstreamError, code="superseded", http_status=409, client_error=True, dead_letter=False
):
    """A newer frame of the same key (camera) was waiting beside this one and was
    run instead (`conflate: latest`); this frame was not run (nor decoded, unless
    its decoding had already started: then its pixels were dropped).

    Not a fault of anyone: never copied to the dead-letter queue, and asking
    again makes no sense, since the newer frame already has its answer.
    """


# -- the model or the service is at fault ------------------------------------


class InvalidModelConfig(TfstreamError, code="invalid_model_config", http_status=500):
    """A model folder is malformed: config.json, label map or weights layout."""


class ModelLoadFailed(TfstreamError, code="model_load_failed", http_status=503, retriable=True):
    """The weights exist but TensorFlow could not load or run them."""


class InvalidModelOutput(TfstreamError, code="invalid_model_output", http_status=500):
    """The model ran but its outputs break the convention it was loaded with
    (normalised boxes past [0, 1], NaN, right < left, unknown class ids...).

    Answering a box computed from such outputs would be silently wrong; the
    request gets this instead and the worker goes on serving. Not retriable:
    the same image gives the same outputs until the model or its config.json
    changes.
    """


class InferenceFailed(TfstreamError, code="inference_failed", http_status=500, retriable=True):
    """The engine raised while running a batch; every request in it gets this."""


class ModelUnavailable(TfstreamError, code="model_unavailable", http_status=503, retriable=True):
    """The model exists but no worker serves it right now."""


class ModelLoading(ModelUnavailable, code="model_loading"):
    """The model exists and is being loaded, with no weights serving yet: its labels,
    config and version are not known until it is ready. Retry after a few seconds."""


class ServiceUnavailable(
    TfstreamError, code="service_unavailable", http_status=503, retriable=True
):
    """The broker (or another dependency) cannot be reached."""


class UntrustedBroker(ServiceUnavailable, retriable=False):
    """The broker's TLS certificate is not one the configured CA vouches for:
    waiting does not fix that, so a starting process gives up at once."""


class RequestTimeout(TfstreamError, code="timeout", http_status=504, retriable=True):
    """No answer came back in time; the request may still be answered later."""


class ReplyUndeliverable(TfstreamError, code="reply_undeliverable", http_status=502):
    """A reply's destination topic does not exist or refuses it (e.g. a client's
    reply topic deleted while its requests were queued)."""


class NotAuthorized(TfstreamError, code="not_authorized", http_status=403, client_error=True):
    """Kafka refused this process's credentials, or an operation on a resource its
    ACLs do not allow (e.g. Write on `<prefix>.requests.<model>`). The message names
    the operation and the resource; retrying with the same credentials cannot help."""


class Unauthorized(TfstreamError, code="unauthorized", http_status=401, client_error=True):
    """The bridge was started with an API key and this call did not carry it. Only
    HTTP answers it: Kafka's own credentials fail as `not_authorized`."""
