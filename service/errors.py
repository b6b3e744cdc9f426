"""Domain errors, each with its HTTP status and code; service/handlers.py turns them into
responses. Plain Python, so the decoder (shared with training) can raise them."""

from __future__ import annotations

from simclr_embed.errors import UserError


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.headers, self.param = message, headers, param

    def about(self, item: str) -> ServiceError:
        """The same error, naming the item of a request it concerns ('images[3]')."""
        return type(self)(f"{item}: {self.message}", self.headers, item)


class BadImage(ServiceError):
    status, code = 400, "bad_image"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class Overloaded(ServiceError):
    status, code = 503, "overloaded"


class RequestTimeout(ServiceError):
    status, code = 408, "request_timeout"


class FetchFailed(ServiceError):
    """An image URL's server could not be reached or spoke no HTTP (refused, TLS, timeout,
    DNS): the upstream's fault, not the request's, as a proxy would answer."""

    status, code = 502, "fetch_failed"


class StorageFull(ServiceError, UserError):
    status, code = 507, "insufficient_storage"


class StorageError(ServiceError, UserError):
    status, code = 503, "storage_unavailable"


class ModelFailure(ServiceError):
    status, code = 500, "model_failure"


class DeadlineExceeded(ServiceError):
    """The client's own deadline (X-Request-Timeout) passed before its work was done: as a
    gateway answers a timed-out upstream."""

    status, code = 504, "deadline_exceeded"
