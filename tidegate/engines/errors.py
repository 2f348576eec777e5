"""The engine layer's errors. :class:`EngineError` is the root; each error names the wire
error code it maps to. Errors a request caused (:class:`RequestError`: wrong shape, wrong
dtype) are kept apart from errors we caused (a model that failed to run, a missing model)."""

from __future__ import annotations

from tidegate.protocol.errors import ErrorCode


class EngineError(Exception):
    """Root of every error raised by ``tidegate.engines``."""

    code: ErrorCode = ErrorCode.INTERNAL


class RequestError(EngineError):
    """The request itself is wrong (shape, dtype, missing input): the caller's fault."""

    code = ErrorCode.INVALID_FIELD


class OverloadedError(EngineError):
    """The engine's queue is full: the request was refused. Retry after ``retry_after_s``."""

    code = ErrorCode.OVERLOADED

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineError(EngineError):
    """The request's result was not ready by its deadline (it never ran if it was queued)."""

    code = ErrorCode.TIMEOUT


class EngineClosedError(EngineError):
    """The engine is closed (or closing): no more requests are taken."""

    code = ErrorCode.OVERLOADED


class InferenceError(EngineError):
    """The model failed to run this request (our fault: the text stays in the server log)."""

    code = ErrorCode.INTERNAL


class SessionError(EngineError):
    """A per-session state problem: unknown session, or too many sessions on one engine."""

    code = ErrorCode.OVERLOADED


class ModelError(EngineError):
    """A model is missing, unprepared, corrupt, or does not match its declared signature."""

    code = ErrorCode.INTERNAL


class MissingPackageError(ModelError):
    """A package a model is prepared from is not installed (or its wheel is not cached)."""

    def __init__(self, package: str, hint: str) -> None:
        super().__init__(f"the model source package {package!r} is missing: {hint}")
        self.package = package
        self.hint = hint


class RuntimeUnavailableError(EngineError):
    """A requested runtime or execution provider cannot be used on this machine."""

    code = ErrorCode.UNSUPPORTED
