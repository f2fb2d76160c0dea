"""Synchronisation helpers for concurrency tests: wait until the database reports blocked sessions.

These poll a server's lock tables, with a bounded number of rounds; they never assert timing.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa

from tests.conftest import Db

_QUERIES = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE :pattern",
    # innodb_trx does not list every waiter as LOCK WAIT; a claim still executing is a blocked one
    "mariadb": "SELECT count(*) FROM information_schema.processlist WHERE command = 'Query' AND info LIKE :pattern",
}


def wait_for_blocked(db: Db, count: int, rounds: int = 400) -> bool:
    """Return True once ``count`` sessions wait on a lock of this test's keys table (False after ``rounds`` polls; SQLite: False)."""
    query = _QUERIES.get(db.name)
    if query is None:
        return False
    pause = threading.Event()
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for _ in range(rounds):
            waiting = conn.execute(sa.text(query), {"pattern": f"%INSERT INTO {db.keys.name}%"}).scalar_one()
            if int(waiting) >= count:
                return True
            pause.wait(0.025)  # polling interval of a bounded loop, not a timing assumption
    return False
