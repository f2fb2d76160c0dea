"""What the worker tests check, written once and run on each broker."""

from __future__ import annotations

import uuid

from tests.contrib_celery.app import LEASE
from tests.contrib_celery.harness import CeleryEnv


def new_ref() -> str:
    return f"ord-{uuid.uuid4().hex[:12]}"


def killed_then_redelivered(env: CeleryEnv, database: str, point: str, task: str = "order") -> None:
    """SIGKILL the pool process at ``point`` ("write": before the commit, "commit": after the commit,
    before the ack); the redelivered message runs again (or replays): exactly one order row, and the
    task's result is that row."""
    db = env.database(database)
    ref = new_ref()
    env.flags.put(f"hold-{point}-{ref}")
    result = env.send(task, database, ref=ref, amount=5)
    killed = env.kill_at(point, ref)
    receipt = env.get(result)
    rows = db.rows(ref)
    assert len(rows) == 1
    assert receipt == {"order_id": rows[0].id, "ref": ref, "amount": 5}
    runs = env.flags.lines(f"runs-{ref}")
    assert runs[0] == str(killed)
    # Killed before the commit: the write was rolled back and the redelivery ran the body again.
    # Killed after it: the redelivery replayed the stored result without running the body.
    assert len(runs) == (2 if point == "write" else 1)


def two_sends_one_order(env: CeleryEnv, database: str) -> None:
    """Two sends of one order (two task ids, one business key): one row, and both results are equal."""
    db = env.database(database)
    ref = new_ref()
    first = env.send("place", database, ref=ref, amount=7)
    second = env.send("place", database, ref=ref, amount=7)
    assert first.id != second.id
    one, two = env.get(first), env.get(second)
    rows = db.rows(ref)
    assert len(rows) == 1
    assert one == two == {"order_id": rows[0].id, "ref": ref, "amount": 7}
    assert len(env.flags.lines(f"runs-{ref}")) == 1


def retry_writes_once(env: CeleryEnv, database: str) -> None:
    """The body writes, then fails transiently and calls self.retry(): Retry is not a completion, so the
    first write rolls back with the released key and the retried run (same request id) writes the one row."""
    db = env.database(database)
    ref = new_ref()
    env.flags.put(f"transient-{ref}")
    result = env.send("order", database, ref=ref, amount=3)
    receipt = env.get(result)
    rows = db.rows(ref)
    assert len(rows) == 1
    assert receipt == {"order_id": rows[0].id, "ref": ref, "amount": 3}
    assert env.flags.lines(f"retried-{ref}") == [result.id]
    assert len(env.flags.lines(f"runs-{ref}")) == 2


def lease_taken_over_after_expiry(env: CeleryEnv, database: str) -> None:
    """Lease mode: the pool process dies mid-call. The redelivery finds the dead run's lease still live
    and is sent again for later (not run); once the store's clock passes the lease, the next delivery
    takes over and completes. The effect ran twice: lease mode is at-least-once after a crash."""
    env.database(database)
    ref = new_ref()
    env.flags.put(f"hold-charge-{ref}")
    result = env.send("charge", database, ref=ref)
    killed = env.kill_at("charge", ref)
    env.wait_for(f"retried-{ref}")  # the redelivery met the live lease and asked to run later
    assert env.flags.lines(f"charges-{ref}") == [str(killed)]
    assert result.state == "RETRY"
    env.flags.put("clock-offset", str(LEASE + 1))
    try:
        # The sends that waited for the lease did not count as retries of the task.
        assert env.get(result) == {"charged": ref, "retries": 0}
    finally:
        env.flags.take("clock-offset")
    charges = env.flags.lines(f"charges-{ref}")
    assert len(charges) == 2
    assert charges[1] != str(killed)
