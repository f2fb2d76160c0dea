"""Make any function safe to retry: its key and result commit with its own database writes."""

from idempotent._sql import SQLStore
from idempotent.decorator import configure, idempotent
from idempotent.errors import (
    IdempotencyError,
    InProgress,
    InvalidKey,
    KeyReused,
    MissingKey,
    SerializationError,
    TransactionAborted,
)

__all__ = [
    "IdempotencyError",
    "InProgress",
    "InvalidKey",
    "KeyReused",
    "MissingKey",
    "SQLStore",
    "SerializationError",
    "TransactionAborted",
    "configure",
    "idempotent",
]
