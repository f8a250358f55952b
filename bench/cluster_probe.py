"""What redis-py's cluster client does with each kind of call the app sends.

The evidence of the tables of docs/cluster-design.md.

Usage: ``python -m bench.cluster_probe``. Not a benchmark: it starts a cluster of 3 masters
with one replica each (``tests.redis_cluster.Cluster``), sends each shape of call the
design document's tables list (cross-slot scripts and multi-key commands, pipelined scripts,
script loads, per-node commands, WAIT, scripts' undeclared keys), then the app's own
transport built on the cluster through a django-redis connection factory, then failures:
scripts after a failover, the other masters during it, a dead and a hung master. Each line
says what came back, or the exception, its class and whether it is a ``RedisError`` (what
the transport catches). Always exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable

import redis
from django_redis.pool import ConnectionFactory
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from tests.redis_cluster import Cluster

SCRIPT = "return {KEYS[1], ARGV[1]}"


def show(name: str, call: Callable[[], object]) -> None:
    """Print what ``call`` returned, or the exception it raised."""
    try:
        print(f"[{name}] -> {call()!r}"[:300])
    except Exception as exc:
        kind = f"{type(exc).__name__}, RedisError: {isinstance(exc, redis.RedisError)}"
        print(f"[{name}] raises {kind}: {exc}"[:300])


def pipelined(client: RedisCluster, *commands: tuple, raise_on_error: bool = True) -> Callable:
    """Return a call that sends ``commands`` (``execute_command`` arguments) in one pipeline."""

    def send():
        pipe = client.pipeline(transaction=False)
        for args in commands:
            *words, options = args if isinstance(args[-1], dict) else (*args, {})
            pipe.execute_command(*words, **options)
        return pipe.execute(raise_on_error=raise_on_error)

    return send


def shapes(client: RedisCluster) -> None:
    """Commands and scripts as the app sends them, against a healthy cluster."""
    row, model = "p:{m.a:1}:entry", "p:{m.a}:version"
    sha = client.script_load(SCRIPT)
    show("script_load, not pipelined", lambda: sha)
    show("EVALSHA, keys of 2 slots", lambda: client.evalsha(sha, 2, row, model))
    show("MGET, keys of 2 slots", lambda: client.mget([row, model]))
    show("mget_nonatomic, keys of 2 slots", lambda: client.mget_nonatomic([row, model]))
    show("execute_command DEL, keys of 2 slots", lambda: client.execute_command("DEL", row, model))
    show("delete(), keys of 2 slots", lambda: client.delete(row, model))
    show("BLPOP, keys of 2 slots", lambda: client.blpop([row, model], 0.1))
    show("BLPOP, keys of 1 slot", lambda: client.blpop(["p:{x}:1", "p:{x}:2"], 0.1))

    def pipe_method(method: str) -> Callable:
        def send():
            pipe = client.pipeline(transaction=False)
            if method == "evalsha":
                pipe.evalsha(sha, 1, row, 1)
            else:
                pipe.script_load(SCRIPT)
            return pipe.execute()

        return send

    show("pipeline .evalsha(), one slot", pipe_method("evalsha"))
    show("pipeline .script_load()", pipe_method("script_load"))
    scripts = [("EVALSHA", sha, 1, f"e:{{{i}}}", i) for i in range(4)]
    show(
        "pipeline execute_command EVALSHA on 4 slots, then an unknown SHA",
        pipelined(client, *scripts, ("EVALSHA", "0" * 40, 1, "e:{9}"), raise_on_error=False),
    )
    show("pipeline EVALSHA, keys of 2 slots", pipelined(client, ("EVALSHA", sha, 2, row, model)))
    show("pipeline SCRIPT LOAD", pipelined(client, ("SCRIPT LOAD", SCRIPT)))
    show("pipeline DEL, keys of 2 slots", pipelined(client, ("DEL", "e:{1}", "e:{2}")))
    show(
        "pipeline SET on 6 slots", pipelined(client, *[("SET", f"k:{{{i}}}", i) for i in range(6)])
    )
    show(
        "transaction over 2 slots",
        lambda: (lambda p: (p.set("t:{1}", 1), p.set("t:{2}", 2), p.execute())[-1])(
            client.pipeline(transaction=True)
        ),
    )
    same = "local k = KEYS[1] .. ':other'; redis.call('SET', k, '1'); return redis.call('GET', k)"
    show("script, undeclared key of its slot", lambda: client.eval(same, 1, "u:{r1}"))
    other = "redis.call('SET', ARGV[1], '1'); return 1"
    show(
        "script, undeclared key of another slot", lambda: client.eval(other, 1, "u:{r1}", "u:{r2}")
    )
    show("execute_command SCAN 0", lambda: client.execute_command("SCAN", 0, "MATCH", "k:*"))
    show("scan_iter", lambda: sorted(client.scan_iter("k:*")))
    show("execute_command DBSIZE", lambda: client.execute_command("DBSIZE"))
    show("dbsize on every primary", lambda: client.dbsize(target_nodes=RedisCluster.PRIMARIES))
    show("info() server", lambda: client.info("server")["tcp_port"])
    show("info on every primary", lambda: sorted(client.info(target_nodes=RedisCluster.PRIMARIES)))
    show("connection_pool", lambda: client.connection_pool)
    show("get_connection_kwargs()", lambda: client.get_connection_kwargs().get("socket_timeout"))
    node = client.get_node_from_key("w:{1}")
    show("SET + WAIT 1 untargeted", pipelined(client, ("SET", "w:{1}", 1), ("WAIT", 1, 100)))
    show(
        "SET + WAIT 1 at the key's node",
        pipelined(client, ("SET", "w:{1}", 1), ("WAIT", 1, 100, {"target_nodes": node})),
    )


class _Factory(ConnectionFactory):
    # django-redis's CONNECTION_FACTORY hook, returning the cluster client.
    def connect(self, url):
        return RedisCluster.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def disconnect(self, connection):
        connection.close()


def transport(cluster: Cluster) -> None:
    """The app's transport and Django's cache API on a cluster, through django-redis."""
    import django
    from django.conf import settings

    sys.modules["bench_cluster_factory"] = types.SimpleNamespace(Factory=_Factory)
    options = {"CONNECTION_FACTORY": "bench_cluster_factory.Factory"}
    settings.configure(
        INSTALLED_APPS=["django_cachestrat"],
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": cluster.url,
                "OPTIONS": options,
            }
        },
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    )
    django.setup()
    from django.core.cache import cache
    from django_redis import get_redis_connection

    from django_cachestrat import backends
    from django_cachestrat.backends import scripts

    show("get_redis_connection()", lambda: type(get_redis_connection("default")).__name__)
    show("cache.set + cache.get", lambda: (cache.set("a", 1), cache.get("a")))
    show("cache.get_many", lambda: cache.get_many(["a", "b", "c"]))
    show(
        "cache.set_many + delete_many",
        lambda: (cache.set_many({"x": 1}), cache.delete_many(["x", "y"])),
    )
    show("cache.clear", lambda: cache.clear())
    wire = backends.get("default")
    show("transport.get", lambda: wire.get("p:{m:1}:entry"))
    show("transport.mget of a hit's keys", lambda: wire.mget(["p:{m}:version", "p:{m:1}:entry"]))
    show("transport.version", lambda: wire.version("p:{m}:version"))
    two = [(scripts.VERSION, [f"p:{{{m}}}:version"], [1, "0"]) for m in "mn"]
    show("transport.execute of 2 scripts", lambda: wire.execute(two))
    show(
        "transport.execute of 2 GETs",
        lambda: wire.execute([("GET", "p:{m}:version"), ("GET", "p:{n}")]),
    )
    show("transport.delete of 2 rows", lambda: wire.delete("p:{m}:version", ["p:{m:1}", "p:{m:2}"]))
    show("transport.block", lambda: wire.block(["p:{m:1}:ready"], 0.1))
    show("transport.info", lambda: wire.info()["tcp_port"])
    show("breaker still closed", lambda: wire.available)


def failover(cluster: Cluster, client: RedisCluster) -> None:
    """Scripts after a failover, the other masters during it, a dead master before it."""
    sha = client.script_load(SCRIPT)
    key = "s:{failover}"
    client.set(key, "v")
    client.execute_command("WAIT", 1, 2000, target_nodes=client.get_node_from_key(key))
    master = cluster.master_of(key)
    replica = cluster.replicas(master)[0]
    show("the replica knows the script", lambda: redis.Redis(port=replica.port).script_exists(sha))
    other = next(f"o:{{{i}}}" for i in range(1000) if cluster.master_of(f"o:{{{i}}}") != master)
    done, errors, answered = threading.Event(), [], [0]
    watcher = cluster.client()

    def hammer():
        while not done.is_set():
            try:
                watcher.set(other, "x")
                answered[0] += 1
            except redis.RedisError as exc:
                errors.append(type(exc).__name__)
            time.sleep(0.02)

    thread = threading.Thread(target=hammer)
    thread.start()
    started = time.monotonic()
    cluster.kill(master)
    cluster.wait_promoted(master)
    took = time.monotonic() - started
    done.set()
    thread.join()
    watcher.close()
    print(
        f"[failover] {took:.2f}s from SIGKILL to cluster_state:ok; another master meanwhile: "
        f"{answered[0]} SETs answered, errors: {sorted(set(errors)) or 'none'} ({len(errors)})"
    )
    show("EVALSHA on the promoted replica", lambda: client.evalsha(sha, 1, key))
    show("GET through the client made before", lambda: client.get(key))
    cluster.restart(master)
    key = "s:{dead}"
    dead = cluster.kill_master_of(key)
    fresh = cluster.client(socket_timeout=0.5, socket_connect_timeout=0.5)
    started = time.monotonic()
    show("GET of a dead master's slot", lambda: fresh.get(key))
    print(f"  in {time.monotonic() - started:.3f}s")
    fresh.close()
    cluster.wait_promoted(dead)
    cluster.restart(dead)


def hung() -> None:
    """How long a call to a hung master (SIGSTOP) takes to fail, by retry setting."""
    cluster = Cluster(node_timeout_ms=60_000).start()  # no failover while it hangs
    try:
        key = "h:{1}"
        retries = {
            "default retry": {},
            "Retry(NoBackoff(), 1)": {"retry": Retry(NoBackoff(), 1)},
            "Retry(NoBackoff(), 0)": {"retry": Retry(NoBackoff(), 0)},
        }
        for name, kwargs in retries.items():
            master = cluster.master_of(key)
            client = cluster.client(socket_timeout=0.25, socket_connect_timeout=0.25, **kwargs)
            client.set(key, 1)
            os.kill(master.process.pid, signal.SIGSTOP)
            started = time.monotonic()
            show(
                f"GET of a hung master, {name}, socket timeouts 0.25 s", lambda c=client: c.get(key)
            )
            print(f"  in {time.monotonic() - started:.2f}s")
            os.kill(master.process.pid, signal.SIGCONT)
            time.sleep(0.5)
            client.close()
    finally:
        cluster.stop()


def main() -> int:
    cluster = Cluster().start()
    client = cluster.client()
    try:
        print(f"redis-py {redis.__version__}; a cluster of 3 masters + 3 replicas\n")
        shapes(client)
        print()
        transport(cluster)
        print()
        failover(cluster, client)
    finally:
        client.close()
        cluster.stop()
    print()
    hung()
    return 0


if __name__ == "__main__":
    sys.exit(main())
