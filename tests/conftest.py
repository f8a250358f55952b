import os

import pytest
import redis
from django.conf import settings
from django.db import connections

from django_cachestrat import backends, conf, keys, signing
from django_cachestrat.signals import (
    cache_error,
    cache_fill,
    cache_hit,
    cache_invalidate,
    cache_miss,
    cache_stale,
    cache_wait,
    cache_wait_timeout,
)
from tests import redis_server


class RingClient:
    """The suite's ring seen as one client (``CACHESTRAT_TEST_RING``), for tests that look at keys.

    A command goes to the node of its (first) key, as the app places it; a model's keys,
    which every node has, are read on the first node. ``scan_iter`` walks every node.
    """

    _ROUTED = frozenset(
        [
            "get",
            "set",
            "exists",
            "rpush",
            "hlen",
            "ttl",
            "pttl",
            "zcard",
            "zadd",
            "hkeys",
            "hget",
            "hgetall",
            "blpop",
            "type",
            "hset",
            "hincrby",
            "lrange",
        ]
    )

    def __init__(self):
        from django_cachestrat.backends.ring import Placement

        cfg = conf.settings()
        self.placement = Placement(cfg.ring)
        self.clients = {
            alias: redis.Redis.from_url(settings.CACHES[alias]["LOCATION"]) for alias, _ in cfg.ring
        }
        self.first = self.clients[cfg.ring[0][0]]

    def client(self, key):
        tag = keys.hash_tag(key.decode() if isinstance(key, bytes) else key)
        return self.clients[self.placement.owner(tag)] if ":" in tag else self.first

    def __getattr__(self, name):
        if name in self._ROUTED:

            def routed(key, *args, **kwargs):
                first = key[0] if isinstance(key, list | tuple) else key
                return getattr(self.client(first), name)(key, *args, **kwargs)

            return routed
        return getattr(self.first, name)  # info, config_resetstat, script_load: the first node

    def delete(self, *names):
        return sum(self.client(name).delete(name) for name in names)

    def scan_iter(self, *args, **kwargs):
        for client in self.clients.values():
            yield from client.scan_iter(*args, **kwargs)

    def close(self):
        for client in self.clients.values():
            client.close()


class ClusterClient:
    """The suite's Redis Cluster (``CACHESTRAT_TEST_CLUSTER``) seen as one server, for tests
    that look at keys: a command names keys as on one server, and they are renamed as the
    app names them on the cluster (``backends.cluster.placed``); a model's keys are the first
    shard's copy (``delete`` deletes every copy). ``scan_iter`` names what it finds as on one
    server.
    """

    _ROUTED = RingClient._ROUTED

    def __init__(self):
        from redis.cluster import RedisCluster

        self.cluster = RedisCluster.from_url(settings.CACHES["default"]["LOCATION"])

    def key(self, name):
        from django_cachestrat.backends.cluster import placed

        text = name.decode() if isinstance(name, bytes) else name
        return placed(text, 0, conf.settings().SHARDS)

    def __getattr__(self, name):
        if name in self._ROUTED:

            def routed(key, *args, **kwargs):
                if isinstance(key, list | tuple):
                    names = [self.key(k) for k in key]
                    reply = getattr(self.cluster, name)(names, *args, **kwargs)
                    if name == "blpop" and reply is not None:
                        from django_cachestrat.backends.cluster import unplaced

                        return (unplaced(reply[0].decode()).encode(), reply[1])
                    return reply
                return getattr(self.cluster, name)(self.key(key), *args, **kwargs)

            return routed
        return getattr(self.cluster, name)

    def config_resetstat(self):
        """Reset the statistics of every primary (redis-py asks one node)."""
        return self.cluster.config_resetstat(target_nodes="primaries")

    def info(self, *section):
        """``INFO`` of every primary, numbers summed (commands counted over the cluster)."""
        return _summed(self.cluster.info(*section, target_nodes="primaries").values())

    def delete(self, *names):
        """Delete keys; a model's key on every shard (as if Redis lost it)."""
        from django_cachestrat.backends.cluster import placed

        shards = conf.settings().SHARDS
        found = 0
        for name in names:
            text = name.decode() if isinstance(name, bytes) else name
            copies = {placed(text, shard, shards) for shard in range(shards)}
            found += sum(self.cluster.delete(copy) for copy in copies)
        return found

    def scan_iter(self, *args, **kwargs):
        from django_cachestrat.backends.cluster import unplaced

        for name in self.cluster.scan_iter(*args, **kwargs):
            yield unplaced(name.decode()).encode()

    def close(self):
        self.cluster.close()


def _summed(infos):
    total = {}
    for info in infos:
        for name, value in info.items():
            if isinstance(value, dict):
                total[name] = _summed([total.get(name, {}), value])
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total[name] = total.get(name, 0) + value
            else:
                total.setdefault(name, value)
    return total


@pytest.fixture
def raw_redis():
    """A plain client on the suite's Redis (on a ring, a ``RingClient``; on a cluster, a
    ``ClusterClient``)."""
    if settings.CLUSTER:
        client = ClusterClient()
    elif len(conf.settings().ring) > 1:
        client = RingClient()
    else:
        client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    yield client
    client.close()


def node_clients():
    """A plain client on each node of the suite's cache: one, or the ring's
    (``CACHESTRAT_TEST_RING``), or the cluster's client (``CACHESTRAT_TEST_CLUSTER``)."""
    if settings.CLUSTER:
        from redis.cluster import RedisCluster

        return [RedisCluster.from_url(settings.CACHES["default"]["LOCATION"])]
    aliases = [alias for alias, _ in conf.settings().ring] or [conf.settings().CACHE_ALIAS]
    return [redis.Redis.from_url(settings.CACHES[alias]["LOCATION"]) for alias in aliases]


def nodes_of(*names):
    """The nodes of the suite's cache holding the keys ``names`` (one, off a ring)."""
    transport = backends.get(conf.settings().CACHE_ALIAS)
    return {transport.node(name) for name in names}


def settle_ring():
    """Write the ring records of the configured ring on its nodes, as a rebalance would."""
    from django_cachestrat.backends.ring import Placement, Record

    cfg = conf.settings()
    placement = Placement(cfg.ring)
    for (alias, _), client in zip(cfg.ring, node_clients(), strict=True):
        record = Record(placement.fingerprint, 1, alias, placement.nodes)
        client.set(keys.ring_record(cfg.KEY_PREFIX), record.dumps())
        client.close()


@pytest.fixture(autouse=True)
def clean_cache(raw_redis):
    """Every test starts with none of our keys and a fresh transport (breaker closed).

    On a ring, on every node, and with the ring settled.
    """
    prefix = conf.settings().KEY_PREFIX

    def wipe():
        for client in node_clients():
            keys = list(client.scan_iter(f"{prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):  # a cluster's delete splits by slot
                client.delete(*keys[start : start + 1000])
            client.close()

    wipe()
    if len(conf.settings().ring) > 1:
        settle_ring()
    backends.reset()
    yield
    backends.reset()


def unsigned(key: str, data: bytes) -> bytes:
    """Return an entry as the codec made it, its MAC checked and taken off (if signed)."""
    signer = conf.settings().signer
    if signer is None:
        return data
    assert signer.verifies(signing.ENTRY, key.encode(), data[signing.TAG :], data[: signing.TAG])
    return data[signing.TAG :]


def signed(key: str, body: bytes) -> bytes:
    """Return entry bytes as the app stores them under ``key``: with a MAC, if it signs."""
    signer = conf.settings().signer
    return body if signer is None else signer.tag(signing.ENTRY, key.encode(), body) + body


def pointer_pk(key: str, data: bytes) -> bytes:
    """Return the pk a stored lookup pointer holds, its MAC checked (if signed)."""
    signer = conf.settings().signer
    if signer is None:
        return data
    import time

    return signer.open_pointer(key, data, time.time())


class Events:
    """Counts the core's events by name and model."""

    def __init__(self):
        self.counts = {}
        self.errors = []
        self._receivers = []
        counted = [
            ("hit", cache_hit),
            ("miss", cache_miss),
            ("fill", cache_fill),
            ("wait", cache_wait),
            ("wait_timeout", cache_wait_timeout),
            ("stale", cache_stale),
        ]
        for name, signal in counted:
            self._listen(signal, name, lambda kw: kw["keys"])
        self._listen(cache_invalidate, "invalidate", lambda kw: 1)
        self._listen(cache_error, "error", lambda kw: self.errors.append(kw["error"]) or 1)

    def _listen(self, signal, name, amount):
        def receiver(sender, **kwargs):
            key = (name, sender._meta.label if sender else None)
            self.counts[key] = self.counts.get(key, 0) + amount(kwargs)

        signal.connect(receiver, weak=False)
        self._receivers.append((signal, receiver))

    def __call__(self, name, model=None):
        label = model._meta.label if model else None
        return sum(
            v for (n, m), v in self.counts.items() if n == name and (model is None or m == label)
        )

    def close(self):
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)


@pytest.fixture
def events():
    recorder = Events()
    yield recorder
    recorder.close()


def child_env():
    """Environment for a process a test starts: same Redis, same (test) database."""
    import os

    from django.db import connection, connections

    env = dict(os.environ)
    env["REDIS_URL"] = redis_server.url()  # the server's, not the cluster's
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    if connection.vendor == "postgresql":
        env["PGDATABASE"] = connection.settings_dict["NAME"]
        env["PGDATABASE_OTHER"] = connections["other"].settings_dict["NAME"]
    else:
        # The second database's name is made from the first's (tests/settings.py).
        env["CACHESTRAT_TEST_DB_NAME"] = connection.settings_dict["NAME"]
    return env


@pytest.fixture
def celery_workers(tmp_path):
    """Start real Celery workers: ``celery_workers()`` returns a started ``tests.worker.Worker``
    on this run's queue (keyword arguments go to ``Worker``); ``celery_workers(count=3)``
    returns a list of three separate worker processes, started side by side (each with the
    same arguments), once all of them answer. At teardown, whatever happened,
    every worker started is stopped and the queue purged; it is purged at set-up too.

    A worker uses the test database: mark the test ``django_db(transaction=True)``, so that
    what the test writes is committed and the worker's writes are cleaned up afterwards.
    """
    from tests.worker import Worker, purge

    started = []

    def start(count=None, **kwargs):
        workers = [Worker(directory=tmp_path, **kwargs) for _ in range(count or 1)]
        started.extend(workers)
        for worker in workers:
            worker.spawn()
        for worker in workers:
            worker.ready()
        return workers if count is not None else workers[0]

    purge()
    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
        purge()


@pytest.fixture
def celery_worker(celery_workers):
    """One started real Celery worker (see ``celery_workers``)."""
    return celery_workers()


def row_updates(queries) -> list[str]:
    """The UPDATE statements captured, one per row written (executemany counts each row)."""
    import re

    rows = []
    for query in queries:
        sql = query["sql"]
        many = re.match(r"(\d+) times: (UPDATE .*)", sql, re.S)
        if many:
            rows += [many.group(2)] * int(many.group(1))
        elif sql.startswith("UPDATE") and not sql.endswith("WHERE 1 = 0"):  # not the lock
            rows.append(sql)
    return rows


@pytest.fixture
def sends(monkeypatch):
    """What the test's thread sends to Redis, one item a send: one send is one round trip.

    Only that thread's: the statistics sender thread sends on its own schedule.
    """
    import threading

    from redis.connection import AbstractConnection

    sent = []
    real = AbstractConnection.send_packed_command
    mine = threading.get_ident()

    def counting(self, command, *args, **kwargs):
        if threading.get_ident() == mine:
            sent.append(command)
        return real(self, command, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


#: Debian's chromium, which the browser tests drive (Playwright's own browsers are never
#: downloaded). ``.ci/run`` installs it when it is missing.
CHROMIUM = "/usr/bin/chromium"
#: Headless, as root, on a machine with no outside network: no sandbox, no GPU, and none of
#: the background connections a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser_page(monkeypatch):
    """A Playwright page in a new headless Chromium, closed after the test.

    Skipped when ``/usr/bin/chromium`` is missing (``apt-get install -y chromium``), unless
    ``CACHESTRAT_REQUIRE_BROWSER=1`` (``.ci/run`` sets it): then a missing browser fails.
    Use it with pytest-django's ``live_server``. Playwright's sync API runs its event loop
    in the test's thread, where Django would refuse database calls as if they were made
    from async code; the test's code is synchronous all the same, so they are allowed
    while the page lives.
    """
    if not os.path.exists(CHROMIUM):
        reason = f"no browser at {CHROMIUM}: apt-get install -y chromium (as root)"
        if os.environ.get("CACHESTRAT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CACHESTRAT_REQUIRE_BROWSER=1 and {reason}", pytrace=False)
        pytest.skip(f"Browser test skipped, {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()
            # Playwright runs the test in a context of its own, where Django keeps
            # connections apart from the test run's: close them here, or on PostgreSQL
            # one stays open and the test database cannot be dropped.
            connections.close_all()
