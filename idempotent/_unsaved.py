"""Saying so when a completed call's writes are lost because its transaction ended without a commit.

A call that joins a transaction SQLAlchemy *auto-began* (for an earlier ``SELECT``, say) leaves the
commit to the caller. If the caller then closes or rolls back the session instead, the function's
writes and its key vanish together: consistent, but silent, and the next retry runs the function
again. This module watches exactly those calls. When the transaction they completed in ends
without a commit, and not because an exception is propagating, it logs an ERROR on the
``idempotent`` logger and emits an :class:`~idempotent.errors.IdempotencyWarning` pointing at the
line that closed or rolled back the session.

A ``Session`` (or ``AsyncSession``) is watched only when SQLAlchemy auto-began its transaction:
one the caller began with ``begin()`` is the caller's to end. A ``Connection`` does not record how
its transaction began, so every joined call on one is watched (through listeners on that
connection alone: engine-wide listeners would slow every statement of the process).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import sys
import threading
import types
import warnings
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from idempotent.errors import IdempotencyWarning

__all__ = ["after_call", "enter", "leave"]

_INFO_KEY = "idempotent.unsaved"
_logger = logging.getLogger("idempotent")
#: The handles whose transaction an enclosing decorated call owns (it commits or rolls back itself).
_owners: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar("idempotent_owners", default=())
_install_lock = threading.Lock()
_installed = False
_connections: weakref.WeakKeyDictionary[sa.Connection, list[tuple[str, str]]] = weakref.WeakKeyDictionary()


@dataclasses.dataclass(slots=True)
class _Pending:
    """The completed calls of one auto-begun root transaction, waiting for its commit."""

    transaction: Any
    calls: list[tuple[str, str]]


def enter(plan: Any, handle: Any) -> contextvars.Token[tuple[object, ...]] | None:
    """Note, while a call that owns its transaction runs, that calls nested in it need no watch."""
    if handle is None or not plan.owned:
        return None
    return _owners.set((*_owners.get(), handle.obj))


def leave(token: contextvars.Token[tuple[object, ...]] | None) -> None:
    if token is not None:
        _owners.reset(token)


def after_call(plan: Any, handle: Any) -> None:
    """Watch a call that completed in a joined transaction it leaves to the caller to commit.

    ``plan`` and ``handle`` are the ones the driver just ran; anything else is left alone: a call
    the decorator committed (owned, or ``commit=True``), a replay, or a session transaction the
    caller began explicitly (the caller asked for it, and commits it).
    """
    if handle is None or plan.owned or plan.replayed or plan.commit:
        return
    if any(owner is handle.obj for owner in _owners.get()):
        return  # an enclosing decorated call owns this transaction and ends it itself
    obj = handle.sync if hasattr(handle, "sync") else handle.obj  # the sync twin of an async handle
    if not handle.is_session:
        _watch_connection(obj, plan.function, plan.request.key)
        return
    if not handle.autobegun():
        return
    session: Session = obj
    _install()
    root = session.get_transaction()
    pending = session.info.get(_INFO_KEY)
    if pending is None or pending.transaction is not root:
        pending = session.info[_INFO_KEY] = _Pending(root, [])
    pending.calls.append((plan.function, plan.request.key))


def _watch_connection(conn: sa.Connection, function: str, key: str) -> None:
    calls = _connections.get(conn)
    if calls is None:
        calls = _connections[conn] = []
        event.listen(conn, "commit", _connection_commit)
        event.listen(conn, "rollback", _connection_rollback)
    calls.append((function, key))


def _connection_commit(conn: sa.Connection) -> None:
    calls = _connections.get(conn)
    if calls:
        calls.clear()


def _connection_rollback(conn: sa.Connection) -> None:
    calls = _connections.get(conn)
    if calls:
        lost = list(calls)
        calls.clear()
        _report(lost)


def _install() -> None:
    """Listen to every ``Session`` once; the listeners cost a dictionary look-up per transaction."""
    global _installed  # noqa: PLW0603  (one process-wide registration)
    if _installed:
        return
    with _install_lock:
        if not _installed:
            event.listen(Session, "after_commit", _after_commit)
            event.listen(Session, "after_transaction_end", _after_transaction_end)
            _installed = True


def _after_commit(session: Session) -> None:
    if not session.in_nested_transaction():  # a released SAVEPOINT is not the commit we wait for
        session.info.pop(_INFO_KEY, None)


def _after_transaction_end(session: Session, transaction: Any) -> None:
    pending = session.info.get(_INFO_KEY)
    if pending is None or pending.transaction is not transaction:
        return
    del session.info[_INFO_KEY]
    _report(pending.calls)


def _report(calls: list[tuple[str, str]]) -> None:
    failing = sys.exc_info()[1]
    for function, key in calls:
        if failing is not None:  # the caller's own error rolls the work back, as it should
            _logger.debug(
                "%s key %r was rolled back with its transaction because of %r; a retry runs it again",
                function,
                key,
                failing,
            )
            continue
        message = (
            f"{function} completed with key {key!r} inside the caller's transaction, which then ended "
            "without a commit: the function's writes and its key were rolled back, and a retry will "
            "run it again. Commit the session or connection after the call, or decorate the function "
            "with @idempotent(..., commit=True)"
        )
        _logger.error(message)
        _warn(message)


def _warn(message: str) -> None:
    """Warn at the line that ended the transaction: the first frame outside this library and
    SQLAlchemy. An async session or connection ends it inside a greenlet whose stack stops at
    SQLAlchemy; the caller's coroutine is then found above the frame that switched into it."""
    frame = _user_frame(sys._getframe(1))
    if frame is None:
        greenlet = sys.modules.get("greenlet")
        parent = getattr(greenlet.getcurrent(), "parent", None) if greenlet is not None else None
        frame = _user_frame(getattr(parent, "gr_frame", None))
    if frame is None:
        warnings.warn(message, IdempotencyWarning, stacklevel=3)
        return
    warnings.warn_explicit(
        message,
        IdempotencyWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=str(frame.f_globals.get("__name__", "")),
        registry=frame.f_globals.setdefault("__warningregistry__", {}),
        module_globals=frame.f_globals,
    )


def _user_frame(frame: types.FrameType | None) -> types.FrameType | None:
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] not in ("idempotent", "sqlalchemy"):
            return frame
        frame = frame.f_back
    return None
