"""A real Celery worker process for tests, on the same Redis and the same test database.

``Worker().start()`` runs ``celery -A tests.celery_app worker`` (solo pool, one task at a
time) on this run's queue and returns once the worker answers a ping (``spawn()`` then
``ready()`` do the same in two steps, so several workers start side by side); ``kill()`` is SIGKILL,
``stop()`` a warm shutdown that ends in SIGKILL if it takes too long; ``log()`` is everything
the worker printed. Tests use the ``celery_worker`` and ``celery_workers`` fixtures
(tests/conftest.py), which stop every worker they started and ``purge()`` the queue.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from celery.utils.nodenames import host_format

from tests.celery_app import app
from tests.conftest import child_env

ROOT = Path(__file__).resolve().parent.parent
#: The variable tests/settings.py merges into ``CACHESTRAT`` (JSON), set by ``Worker(cachestrat=)``.
OVERRIDES = "CACHESTRAT_TEST_OVERRIDES"


def _die_with_parent():
    """In the child, before exec: SIGKILL when the test process dies, even by SIGKILL.

    Linux only. The signal comes when the thread that started the worker ends, so start
    workers from the main thread.
    """
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Worker:
    """One worker process: ``start()``, then ``kill()`` or ``stop()``; ``log()`` any time."""

    def __init__(
        self,
        queue: str | None = None,
        directory: str | Path | None = None,
        env: dict[str, str] | None = None,
        cachestrat: dict | None = None,
    ):
        self.queue = queue or app.conf.task_default_queue
        self.extra_env = dict(env or {})
        if cachestrat:  # values over the CACHESTRAT of tests/settings.py, in the worker only
            self.extra_env[OVERRIDES] = json.dumps(cachestrat)
        self.name = f"cstest-{uuid.uuid4().hex[:8]}"
        self.hostname = host_format(f"{self.name}@%h")
        directory = Path(directory or tempfile.mkdtemp(prefix="cachestrat-celery-"))
        self.log_path = directory / f"{self.name}.log"
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            self.queue,
            "-n",
            f"{self.name}@%h",
            "--loglevel=INFO",
        ]
        self.process: subprocess.Popen | None = None

    def __repr__(self):
        return f"<Worker {self.hostname} queue={self.queue}>"

    def start(self, timeout: float = 20) -> Worker:
        """Start the process and wait until it answers a ping (then it consumes the queue)."""
        return self.spawn().ready(timeout)

    def spawn(self) -> Worker:
        """Start the process; ``ready()`` waits for it."""
        env = child_env()
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        return self

    def ready(self, timeout: float = 20) -> Worker:
        """Wait until the spawned process answers a ping; fail (killing it) after ``timeout`` s."""
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while not app.control.ping(destination=[self.hostname], timeout=0.25):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self} not ready after {timeout} s:\n{self.log()}")
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the task it runs stops mid-way, unacknowledged."""
        if self.alive:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (warm shutdown: the running task finishes), SIGKILL after ``timeout`` s."""
        if not self.alive:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _held(channel, queue):
    """Delivery tags of the messages of ``queue`` that workers took and did not acknowledge."""
    for tag, raw in channel.client.hscan_iter(channel.unacked_key):
        _message, _exchange, routing_key = json.loads(raw)
        if routing_key == queue:
            yield tag


def pending(queue: str | None = None) -> int:
    """How many messages of ``queue`` (default: this run's) wait or are held by a worker."""
    queue = queue or app.conf.task_default_queue
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        return channel._size(queue) + len(list(_held(channel, queue)))


def purge(queue: str | None = None) -> None:
    """Drop the messages of ``queue`` (default: this run's): waiting ones, and the ones
    killed workers held, which the broker would otherwise deliver again to a later worker.
    """
    queue = queue or app.conf.task_default_queue
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_purge(queue)
        for tag in list(_held(channel, queue)):
            channel.client.pipeline().hdel(channel.unacked_key, tag).zrem(
                channel.unacked_index_key, tag
            ).execute()


def wait_until(predicate, timeout: float = 30, interval: float = 0.1, what="condition"):
    """Poll ``predicate`` until it returns a true value, and return that; fail after
    ``timeout`` seconds with ``what`` (a string, or a callable called then, e.g. to show a
    worker's log as it is at that moment).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout} s: {what() if callable(what) else what}")
        time.sleep(interval)
