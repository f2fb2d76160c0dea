"""Run a Celery worker for the tests: ``python -m tests.contrib_celery.worker`` (config from the environment)."""

from __future__ import annotations

import uuid

from tests.contrib_celery.app import Config, make_app

if __name__ == "__main__":
    config = Config.from_env()
    app = make_app(config)
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            f"--queues={config.queue}",
            f"--hostname=idem-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
        ]
    )
