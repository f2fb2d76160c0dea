"""Get/set stores as other idempotency middleware defines them, for the GetSetStore tests."""

from __future__ import annotations

from typing import Any


class DictGetSet:
    """A blocking get/set store over a dict, with ``set(key, value, ttl)`` and ``delete``."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any, ttl: int) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class CachedResponses:
    """An async get/set store shaped like other middleware's: ``set(key, value, *, ttl_seconds)``,
    no delete; it remembers the TTL of each key."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.ttls: dict[str, int] = {}

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def set(self, key: str, value: Any, *, ttl_seconds: int) -> None:
        assert ttl_seconds >= 1
        self.data[key] = value
        self.ttls[key] = ttl_seconds
