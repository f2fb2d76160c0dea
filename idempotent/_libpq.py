"""The library's own statements sent through libpq, under psycopg's connection (sync or async).

psycopg's cursor costs about as much Python per statement as a loopback round trip, and its
pipeline mode more (see benchmarks/README.md). The few statements a decorator-owned first call
adds (the claim, the result write) and a replay's read go straight to the connection's libpq
object instead:

* the claim goes in one pipeline with the BEGIN psycopg was about to send on its own, and the
  result write in one with COMMIT, so a first call costs the round trips of the function's own
  statements and no more;
* a read outside any transaction is one round trip, with no autocommit switch around it;
* statements are prepared once per connection under names of the library's own (``_idem_N``);
* the socket is awaited with ``poll()`` (sync: the GIL is released, and a signal interrupts the
  wait) or with the running asyncio loop's reader (async). A wait cut short leaves the connection
  mid-pipeline: the caller then discards it.

psycopg keeps no state of its own that this bypasses: it reads the transaction status from
libpq before each statement, so it sends no BEGIN after the pipelined one, and ``commit()``
sends nothing once the pipelined COMMIT went through.

Prepared statements can vanish under the library: psycopg sends ``DEALLOCATE ALL`` after a
rolled-back transaction in which it had prepared statements of its own, and a pooler may reset
the session. A statement that no longer exists fails with SQLSTATE 26000: where the library began
the transaction in the same pipeline, it rolls that empty transaction back and sends the
statement again, prepared anew; a result write relies on a named statement only when the claim
of the same transaction just proved the names valid, else it is sent unnamed. A connection
created with ``prepare_threshold=None`` (the setting for poolers that cannot keep prepared
statements) gets unnamed statements only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import select
import sys
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any

#: SQLSTATE of "prepared statement does not exist".
_MISSING = "26000"
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


class _Statement:
    """One statement in libpq's form: ``$n`` placeholders and the parameter names in order."""

    __slots__ = ("convert", "names", "query")

    def __init__(self, sql: str, encoding: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "%"
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.query = _PLACEHOLDER.sub(number, sql).encode(encoding)
        self.names = tuple(names)
        self.convert: tuple[Callable[[bytes], Any], ...] | None = None


class _State:
    """What the library keeps per psycopg connection (under the connection's lock)."""

    __slots__ = ("counter", "encoding", "named", "prepared", "statements", "verified")

    def __init__(self, driver: Any) -> None:
        self.encoding: str = driver.info.encoding
        self.named = driver.prepare_threshold is not None
        self.statements: dict[str, _Statement] = {}
        self.prepared: dict[str, bytes] = {}  # SQL -> name of the statement prepared on the server
        self.counter = 0
        #: the transaction whose claim proved the names valid (a weak reference), or None
        self.verified: weakref.ref[Any] | None = None

    def forget(self) -> None:
        """The server lost the prepared statements: prepare anew, under new names."""
        self.prepared.clear()

    def name_for(self, sql: str) -> tuple[bytes, bool]:
        """The statement's name, and whether it still has to be prepared."""
        name = self.prepared.get(sql)
        if name is not None:
            return name, False
        self.counter += 1
        return b"_idem_%d" % self.counter, True


_states: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def usable(driver: Any) -> bool:
    """True when the library may talk to ``driver``'s libpq object directly: libpq can pipeline,
    nobody else has a pipeline open on it, and no green-thread library is loaded (its hub must
    see every wait on a socket, which psycopg arranges for its own waits only)."""
    if "gevent" in sys.modules or "eventlet" in sys.modules:
        return False
    return _supported() and driver.pgconn.pipeline_status == 0


@functools.cache
def _supported() -> bool:
    try:
        import psycopg  # noqa: PLC0415
        from psycopg.errors import error_from_result  # noqa: F401, PLC0415
    except ImportError:  # pragma: no cover - an older psycopg
        return False
    return bool(psycopg.Pipeline.is_supported())


def _state(driver: Any) -> _State:
    state = _states.get(driver)
    if state is None:
        state = _states[driver] = _State(driver)
    return state


def _statement(state: _State, sql: str) -> _Statement:
    statement = state.statements.get(sql)
    if statement is None:
        statement = state.statements[sql] = _Statement(sql, state.encoding)
    return statement


def _values(statement: _Statement, params: Any, encoding: str) -> list[bytes | None]:
    out: list[bytes | None] = []
    for name in statement.names:
        value = params[name]
        if value is None:
            out.append(None)
        elif isinstance(value, str):
            out.append(value.encode(encoding))
        elif isinstance(value, bool):
            out.append(b"t" if value else b"f")
        elif isinstance(value, int):
            out.append(b"%d" % value)
        else:  # not a type the library binds: say so rather than guess its text form
            raise TypeError(f"unexpected parameter {name}={value!r} ({type(value).__name__})")
    return out


def _converters(result: Any, encoding: str) -> tuple[Callable[[bytes], Any], ...]:
    """Text-format loaders for ``result``'s columns, as psycopg's defaults load them."""

    def text(value: bytes) -> str:
        return value.decode(encoding)

    def boolean(value: bytes) -> bool:
        return value == b"t"

    by_oid: dict[int, Callable[[bytes], Any]] = {16: boolean, 20: int, 21: int, 23: int, 26: int}
    return tuple(by_oid.get(result.ftype(i), text) for i in range(result.nfields))


def _rows(statement: _Statement, result: Any, encoding: str) -> list[tuple[Any, ...]]:
    convert = statement.convert
    if convert is None or len(convert) != result.nfields:
        convert = statement.convert = _converters(result, encoding)
    rows = []
    for r in range(result.ntuples):
        row = []
        for c, load in enumerate(convert):
            value = result.get_value(r, c)
            row.append(None if value is None else load(value))
        rows.append(tuple(row))
    return rows


#: What a step generator yields: wait until libpq's socket is writable (True) or readable (False).
Steps = Generator[bool, None, Any]


def _wait(pgconn: Any, write: bool) -> None:
    """Block (without the GIL, interruptibly) until libpq's socket is readable or writable."""
    fd = pgconn.socket
    poll = getattr(select, "poll", None)
    if poll is None:  # pragma: no cover - Windows
        select.select([] if write else [fd], [fd] if write else [], [])
        return
    poller = poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    poller.poll()


def _drive(steps: Steps, pgconn: Any) -> Any:
    """Run ``steps`` with blocking waits."""
    try:
        write = next(steps)
        while True:
            _wait(pgconn, write)
            write = steps.send(None)
    except StopIteration as stop:
        return stop.value


async def _adrive(steps: Steps, pgconn: Any) -> Any:
    """Run ``steps`` on the running asyncio loop, waiting on the socket without blocking it."""
    loop = asyncio.get_running_loop()
    fd = pgconn.socket
    try:
        write = next(steps)
        while True:
            ready = loop.create_future()

            def wake(ready: asyncio.Future[None] = ready) -> None:
                if not ready.done():
                    ready.set_result(None)

            if write:
                loop.add_writer(fd, wake)
            else:
                loop.add_reader(fd, wake)
            try:
                await ready
            finally:
                if write:
                    loop.remove_writer(fd)
                else:
                    loop.remove_reader(fd)
            write = steps.send(None)
    except StopIteration as stop:
        return stop.value


@functools.cache
def _psycopg() -> tuple[Any, Any, Any]:
    """What the pipelines need from psycopg (imported on first use: psycopg is optional)."""
    from psycopg import OperationalError  # noqa: PLC0415
    from psycopg.errors import error_from_result  # noqa: PLC0415
    from psycopg.pq import ExecStatus  # noqa: PLC0415

    return OperationalError, error_from_result, ExecStatus


def _pipeline(
    pgconn: Any,
    encoding: str,
    commands: Sequence[tuple[str, Any]],
    prepared: dict[str, bytes] | None = None,
) -> Steps:
    """Send ``commands`` in one pipeline; one result per command.

    A command is ``("sql", bytes)`` (a statement without parameters), ``("prepare", (name,
    query, sql))``, ``("prepared", (name, values))`` or ``("unnamed", (query, values))``. Each
    statement the server prepared is recorded in ``prepared`` (SQL -> name), even when a later
    command fails. The first error is raised as psycopg raises it, after every result has been
    read (the server skips what follows an error until the sync).
    """
    OperationalError, error_from_result, ExecStatus = _psycopg()  # noqa: N806  (classes)
    pgconn.enter_pipeline_mode()
    ok = False
    try:
        for kind, arg in commands:
            if kind == "sql":
                pgconn.send_query_params(arg, None)
            elif kind == "prepare":
                pgconn.send_prepare(arg[0], arg[1])
            elif kind == "prepared":
                pgconn.send_query_prepared(arg[0], arg[1])
            else:
                pgconn.send_query_params(arg[0], arg[1])
        pgconn.pipeline_sync()
        while pgconn.flush():
            yield True
        results: list[Any] = []
        current: Any = None
        error: Exception | None = None
        fatal = (ExecStatus.FATAL_ERROR, ExecStatus.BAD_RESPONSE)
        while True:
            yield False  # the server cannot have answered already: wait, then read
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:  # the end of one command's results
                    kind, arg = commands[len(results)]
                    done = current is not None and current.status == ExecStatus.COMMAND_OK
                    if kind == "prepare" and done and prepared is not None:
                        prepared[arg[2]] = arg[0]
                    results.append(current)
                    current = None
                    continue
                status = result.status
                if status == ExecStatus.PIPELINE_SYNC:
                    ok = True
                    if error is not None:
                        raise error
                    if len(results) != len(commands):  # pragma: no cover - a protocol surprise
                        raise OperationalError(f"libpq returned {len(results)} results for {len(commands)}")
                    return results
                if status in fatal and error is None:
                    error = error_from_result(result, encoding=encoding)
                current = result
            if pgconn.status != 0:  # CONNECTION_BAD: the reads above returned what they had
                raise OperationalError(pgconn.get_error_message(encoding) or "the connection was lost")
    finally:
        if ok:
            pgconn.exit_pipeline_mode()
        else:  # interrupted or lost mid-way (results still pending): the caller discards the connection
            with contextlib.suppress(Exception):
                pgconn.exit_pipeline_mode()


def _missing(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == _MISSING


def _statement_commands(state: _State, sql: str, params: Any, named: bool) -> list[tuple[str, Any]]:
    """The commands that run ``sql`` once (preparing it first when new)."""
    statement = _statement(state, sql)
    values = _values(statement, params, state.encoding)
    if not named:
        return [("unnamed", (statement.query, values))]
    name, new = state.name_for(sql)
    commands: list[tuple[str, Any]] = [("prepare", (name, statement.query, sql))] if new else []
    commands.append(("prepared", (name, values)))
    return commands


def _begin_and_run(
    driver: Any, transaction: object, begin: bytes, sql: str, params: Any, fetch: bool
) -> Steps:
    state = _state(driver)
    state.verified = None
    pgconn = driver.pgconn
    for attempt in (1, 2):
        commands = _statement_commands(state, sql, params, state.named)
        try:
            results = yield from _pipeline(
                pgconn, state.encoding, [("sql", begin), *commands], state.prepared
            )
        except Exception as exc:
            if attempt == 1 and state.named and _missing(exc):
                # The server lost the library's statements (psycopg's DEALLOCATE ALL after a
                # rollback, a pooler's reset): nothing else is in the transaction begun above.
                state.forget()
                yield from _pipeline(pgconn, state.encoding, [("sql", b"ROLLBACK")])
                continue
            raise
        if state.named:
            state.verified = weakref.ref(transaction)
        return _answer(_statement(state, sql), results[-1], state.encoding, fetch)
    raise AssertionError("unreachable")  # pragma: no cover


def _run_and_commit(driver: Any, transaction: object, sql: str, params: Any) -> Steps:
    state = _state(driver)
    verified = state.verified
    named = state.named and verified is not None and verified() is transaction
    state.verified = None
    commands = _statement_commands(state, sql, params, named)
    results = yield from _pipeline(
        driver.pgconn, state.encoding, [*commands, ("sql", b"COMMIT")], state.prepared
    )
    return int(results[-2].command_tuples or 0)


def _read(driver: Any, sql: str, params: Any) -> Steps:
    state = _state(driver)
    for attempt in (1, 2):
        commands = _statement_commands(state, sql, params, state.named)
        try:
            results = yield from _pipeline(driver.pgconn, state.encoding, commands, state.prepared)
        except Exception as exc:
            if attempt == 1 and state.named and _missing(exc):
                state.forget()
                continue
            raise
        return _rows(_statement(state, sql), results[-1], state.encoding)
    raise AssertionError("unreachable")  # pragma: no cover


def begin_and_run(
    driver: Any, transaction: object, begin: bytes, sql: str, params: Any, *, fetch: bool
) -> Any:
    """BEGIN and one statement in one round trip: the statement's rows (``fetch``) or rowcount.

    ``transaction`` identifies the transaction being begun; a later :func:`run_and_commit` of the
    same transaction may then rely on the names this proved valid.
    """
    with driver.lock:
        return _drive(_begin_and_run(driver, transaction, begin, sql, params, fetch), driver.pgconn)


def run_and_commit(driver: Any, transaction: object, sql: str, params: Any) -> int:
    """One statement, then COMMIT, in one round trip; the statement's rowcount.

    The statement must fail rather than match nothing, so that the server skips the COMMIT
    behind it. A named statement is used only when ``transaction``'s claim proved the names valid.
    """
    with driver.lock:
        return int(_drive(_run_and_commit(driver, transaction, sql, params), driver.pgconn))


def read(driver: Any, sql: str, params: Any) -> list[tuple[Any, ...]]:
    """One statement outside any transaction (the connection is idle): its rows."""
    with driver.lock:
        rows: list[tuple[Any, ...]] = _drive(_read(driver, sql, params), driver.pgconn)
        return rows


async def abegin_and_run(
    driver: Any, transaction: object, begin: bytes, sql: str, params: Any, *, fetch: bool
) -> Any:
    """:func:`begin_and_run` on psycopg's ``AsyncConnection``."""
    async with driver.lock:
        return await _adrive(_begin_and_run(driver, transaction, begin, sql, params, fetch), driver.pgconn)


async def arun_and_commit(driver: Any, transaction: object, sql: str, params: Any) -> int:
    """:func:`run_and_commit` on psycopg's ``AsyncConnection``."""
    async with driver.lock:
        return int(await _adrive(_run_and_commit(driver, transaction, sql, params), driver.pgconn))


async def aread(driver: Any, sql: str, params: Any) -> list[tuple[Any, ...]]:
    """:func:`read` on psycopg's ``AsyncConnection``."""
    async with driver.lock:
        rows: list[tuple[Any, ...]] = await _adrive(_read(driver, sql, params), driver.pgconn)
        return rows


def _answer(statement: _Statement, result: Any, encoding: str, fetch: bool) -> Any:
    if fetch:
        return _rows(statement, result, encoding)
    return int(result.command_tuples or 0)
