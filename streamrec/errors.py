"""One error tree for streamrec. Each class knows its HTTP status and says what to do next."""

from __future__ import annotations


class StreamrecError(Exception):
    """Base of every error streamrec raises on purpose."""

    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(StreamrecError):
    """A setting is missing, unknown or has a bad value."""

    http_status = 500


class InvalidEvent(StreamrecError):
    """An event breaks the v1 contract. `field` names the offending field when there is one."""

    http_status = 422

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason if field is None else f"{field}: {reason}")
        self.reason = reason
        self.field = field


class BrokerError(StreamrecError):
    """The Kafka broker could not be reached, started or used."""

    http_status = 503


class StoreError(StreamrecError):
    """The online store or stream state store could not be reached or is not set up."""

    http_status = 503


class DataError(StreamrecError):
    """Input data (an import file, an archive window, a training set) is unusable as given."""

    http_status = 422


class ArtifactError(StreamrecError):
    """A model or index artifact is missing, corrupted, tampered with or incompatible."""

    http_status = 503


class RequestError(StreamrecError):
    """An API request is malformed or out of bounds. `field` names the offending part."""

    http_status = 422

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.http_status = status


class Unauthorized(StreamrecError):
    """Ingest and admin routes need a valid `X-API-Key` (setting STREAMREC_API_KEYS)."""

    http_status = 401
