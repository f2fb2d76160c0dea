"""The errors `idempotent` raises: one root, each docstring says what happened.

Driver errors are translated into these in one place, :func:`idempotent._sql.classify`.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "IdempotencyError",
    "IdempotencyWarning",
    "InProgress",
    "InvalidKey",
    "KeyReused",
    "MissingKey",
    "SerializationError",
    "StoredError",
    "TableMissing",
    "TransactionAborted",
]


class IdempotencyError(Exception):
    """An idempotency key could not be honoured."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())


class ConfigurationError(IdempotencyError, TypeError):
    """The decorator or the store is configured in a way that cannot work."""


class MissingKey(IdempotencyError, ValueError):
    """The call has no idempotency key, and the decorator requires one."""


class InvalidKey(IdempotencyError, ValueError):
    """The idempotency key is not a str, int or UUID of 1-255 characters."""


class KeyReused(IdempotencyError):
    """The key was already used for a call with different arguments; nothing was run or replayed."""

    def __init__(self, message: str | None = None, *, scope: str = "", key: str = "") -> None:
        super().__init__(message)
        self.scope = scope
        self.key = key


class InProgress(IdempotencyError):
    """Another call with this key is still running; retry after `retry_after` seconds."""

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class TransactionAborted(IdempotencyError):
    """The database aborted the caller's transaction while claiming the key: retry the whole unit of work."""


class SerializationError(IdempotencyError, TypeError):
    """The function's result or arguments cannot be stored faithfully."""


class TableMissing(IdempotencyError):
    """The idempotency keys table does not exist."""


class StoredError(IdempotencyError):
    """A recorded failure whose type cannot be rebuilt; `type_name` and `stored_args` say what it was."""

    def __init__(
        self, message: str | None = None, *, type_name: str = "", args: tuple[object, ...] = ()
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.stored_args = args


class IdempotencyWarning(UserWarning):
    """A call was honoured, but in a way the caller should know about."""
