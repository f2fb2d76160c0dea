"""A worker process for the crash tests: claims a key, says so on stdout, then waits on stdin.

``python -m tests.lease.child MODE DRIVER URL KEYS PAYMENTS SCOPE KEY LEASE``

MODE is ``loop`` (lease-mode calls on a series of keys, printing ``done <key>`` after each,
until killed), ``lease`` (lease mode), ``transaction`` (transaction mode; the business row is
written and flushed, not committed) or ``self-commit`` (transaction mode; the function commits
its business row, and with it the claim, itself). The function prints ``reached`` once it is
past that point and then blocks reading a line from stdin: the parent either kills the process
there or writes ``go``, after which the function returns ``"child"`` and the process prints
``result <json>`` (or ``error <type> <message>``) and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import SQLStore, idempotent

#: Calls a ``loop`` child makes before it exits by itself (the tests kill it long before).
LOOP_CALLS = 10_000


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _hold() -> str:
    _say("reached")
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(3)
    return "child"


def loop(driver: str, url: str, keys: str, scope: str, prefix: str, lease: str) -> int:
    """Lease-mode calls on keys ``<prefix>-0``, ``<prefix>-1``, ... printing ``done <key>`` after each."""
    options: dict[str, Any] = {"key_from": "key", "scope": scope, "lease": float(lease), "wait": 0}
    if driver == "sync":
        store = SQLStore(sa.create_engine(url), keys)

        @idempotent(mode="lease", store=store, **options)
        def work(key: str) -> str:
            return f"child:{key}"

        for i in range(LOOP_CALLS):
            work(f"{prefix}-{i}")
            _say(f"done {prefix}-{i}")
        return 0

    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        store = SQLStore(create_async_engine(url), keys)

        @idempotent(mode="lease", store=store, **options)
        async def awork(key: str) -> str:
            return f"child:{key}"

        for i in range(LOOP_CALLS):
            await awork(f"{prefix}-{i}")
            _say(f"done {prefix}-{i}")

    asyncio.run(run())
    return 0


def main(argv: list[str]) -> int:
    mode, driver, url, keys, payments_name, scope, key, lease = argv
    if mode == "loop":
        return loop(driver, url, keys, scope, key, lease)
    payments = sa.Table(
        payments_name, sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("ref", sa.String(100))
    )
    options: dict[str, Any] = {"key_from": "key", "scope": scope, "lease": float(lease), "wait": 0}
    if driver == "sync":
        engine = sa.create_engine(url)
        store = SQLStore(engine, keys)
        if mode == "lease":

            @idempotent(mode="lease", store=store, **options)
            def work(key: str) -> str:
                return _hold()

            call = lambda: work(key)  # noqa: E731
        else:

            @idempotent(store=store, **options)
            def pay(session: Session, key: str) -> str:
                session.execute(payments.insert().values(ref=key))
                session.flush()
                if mode == "self-commit":
                    session.commit()
                return _hold()

            def call() -> str:
                with Session(engine) as session:
                    return pay(session, key)

        return _report(call)

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def run() -> Any:
        engine = create_async_engine(url)
        store = SQLStore(engine, keys)
        try:
            if mode == "lease":

                @idempotent(mode="lease", store=store, **options)
                async def work(key: str) -> str:
                    return await asyncio.to_thread(_hold)

                return await work(key)

            @idempotent(store=store, **options)
            async def pay(session: AsyncSession, key: str) -> str:
                await session.execute(payments.insert().values(ref=key))
                await session.flush()
                if mode == "self-commit":
                    await session.commit()
                return await asyncio.to_thread(_hold)

            async with AsyncSession(engine) as session:
                return await pay(session, key)
        finally:
            await engine.dispose()

    return _report(lambda: asyncio.run(run()))


def _report(call: Any) -> int:
    try:
        result = call()
    except Exception as exc:  # reported to the parent, which asserts on it
        _say(f"error {type(exc).__name__} {exc}")
        return 0
    _say(f"result {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
