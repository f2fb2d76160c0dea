"""A stand-in framework integration for the fixer's tests.

The fixer never imports it: it only checks that the module can be found, as it does for the
library's real integrations. The decorators do nothing, which is all a fixed file needs in order
to import and compile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def idempotent_endpoint(**options: object) -> Callable[[F], F]:
    """Return a decorator that leaves the handler as it is."""

    def decorate(function: F) -> F:
        return function

    return decorate


def idempotent_view(**options: object) -> Callable[[F], F]:
    """Return a decorator that leaves the view as it is."""

    def decorate(function: F) -> F:
        return function

    return decorate
