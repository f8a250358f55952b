"""Benchmark: a Redis round trip on a Redis Cluster against one server, with redis-py.

Usage: ``python -m bench.cluster_rtt [--ops 2000] [--shards 16]``. It starts its own
servers: one plain server as the test suite starts it (``tests.redis_server.Server``) and a
cluster of 3 masters with one replica each (``tests.redis_cluster.Cluster``), on loopback,
and prints the median (and 10th/90th percentiles) of ``--ops`` calls of each shape, run in
interleaved rounds so that the machine's noise hits them alike:

- ``GET``: one key (redis-py's ``Redis.get`` against ``RedisCluster.get``): the raw cost of
  a round trip through each client;
- ``hit``: the reads a row hit needs: today one ``MGET`` of the model's version and the
  row's entry; on the cluster, the same ``MGET`` when both keys share a hash tag (the design
  of docs/cluster-design.md: the model's keys sharded by tag, one shard per row) and, for
  comparison, a pipeline of two ``GET`` to two masters (the version under a tag of its own);
- ``get_many(100)``: 100 rows and the version: one ``MGET`` of 101 keys on one server, and
  the sharded layout's ``MGET`` per shard on it too (what shards cost a single server); on
  the cluster, one ``MGET`` per shard (``--shards`` shards, each with its own version copy)
  in one cluster pipeline, the same grouped by master (one plain pipeline per master, sent
  one after another: a transport routing by itself), and ``mget_nonatomic`` of 100 rows
  tagged one by one plus the version;
- ``EVALSHA``: a one-key script, as every lease, fill and write-behind record is.

Numbers are in microseconds; the ratio column divides by the first one-server figure of the
same shape. Always exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import redis
from redis.cluster import RedisCluster

from tests.redis_cluster import Cluster
from tests.redis_server import Server

ROUNDS = 20
VALUE = b"x" * 200  # about an entry of a small row


def _shard_keys(shards: int, rows: int) -> tuple[list[list[str]], list[str]]:
    # Per shard: its version key and the entries of its rows (row n goes to shard n % shards).
    groups = [[f"b:{{m|{s}}}:version"] for s in range(shards)]
    for n in range(rows):
        groups[n % shards].append(f"b:{{m|{n % shards}}}:{n}:entry")
    return groups, [key for group in groups for key in group]


def shapes(single: redis.Redis, cluster: RedisCluster, shards: int) -> dict[str, Callable]:
    """Return each measured call by name; every key they read is written first."""
    script = "return redis.call('GET', KEYS[1])"
    sha = single.script_load(script)
    assert cluster.script_load(script) == sha
    row_keys = [f"b:{{m:{n}}}:entry" for n in range(100)]
    groups, sharded = _shard_keys(shards, 100)
    version_key, tagged_hit = "b:{m}:version", ["b:{m|0}:version", "b:{m|0}:0:entry"]
    for client in (single, cluster):
        pipe = client.pipeline(transaction=False)
        for key in [version_key, *row_keys, *sharded]:
            pipe.set(key, VALUE)
        pipe.execute()
    # The version's master and a row's on another one: the untagged hit crosses two nodes.
    other_row = next(k for k in row_keys if cluster.keyslot(k) != cluster.keyslot(version_key))
    assert cluster.get_node_from_key(other_row) != cluster.get_node_from_key(version_key)

    def pipelined_gets(keys):
        pipe = cluster.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return pipe.execute()

    def single_sharded_mgets():
        pipe = single.pipeline(transaction=False)
        for group in groups:
            pipe.execute_command("MGET", *group)
        return pipe.execute()

    def sharded_mgets():
        pipe = cluster.pipeline(transaction=False)
        for group in groups:
            pipe.execute_command("MGET", *group)
        return pipe.execute()

    # The same MGETs grouped by master, one plain pipeline per master, one after another:
    # what a transport that routes by itself (no ClusterPipeline) would send.
    by_node: dict[str, tuple[redis.Redis, list[list[str]]]] = {}
    for group in groups:
        node = cluster.get_node_from_key(group[0])
        by_node.setdefault(node.name, (cluster.get_redis_connection(node), []))[1].append(group)

    def per_node_mgets():
        replies = []
        for connection, node_groups in by_node.values():
            pipe = connection.pipeline(transaction=False)
            for group in node_groups:
                pipe.execute_command("MGET", *group)
            replies += pipe.execute()
        return replies

    return {
        "GET, one server": lambda: single.get(version_key),
        "GET, cluster": lambda: cluster.get(version_key),
        "hit, one server: MGET version + entry": lambda: single.mget([version_key, row_keys[0]]),
        "hit, cluster: MGET, one tag": lambda: cluster.mget(tagged_hit),
        "hit, cluster: 2 GET on 2 masters": lambda: pipelined_gets([version_key, other_row]),
        "get_many(100), one server: MGET 101": lambda: single.mget([version_key, *row_keys]),
        f"get_many(100), one server: {shards} MGET (shards)": single_sharded_mgets,
        f"get_many(100), cluster: {shards} MGET (shards)": sharded_mgets,
        f"get_many(100), cluster: {shards} MGET, a pipeline a master": per_node_mgets,
        "get_many(100), cluster: mget_nonatomic 101": lambda: cluster.mget_nonatomic(
            [version_key, *row_keys]
        ),
        "EVALSHA, one server": lambda: single.evalsha(sha, 1, version_key),
        "EVALSHA, cluster": lambda: cluster.evalsha(sha, 1, version_key),
    }


def measure(calls: dict[str, Callable], ops: int) -> dict[str, list[float]]:
    """Run every call ``ops`` times, in interleaved rounds; return the times in µs."""
    for fn in calls.values():  # warm connections and code paths
        for _ in range(50):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    per_round = max(1, ops // ROUNDS)
    names = list(calls)
    for r in range(ROUNDS):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = calls[name]
            spent = times[name]
            for _ in range(per_round):
                started = time.perf_counter_ns()
                fn()
                spent.append((time.perf_counter_ns() - started) / 1000)
    return times


def report(times: dict[str, list[float]]) -> None:
    """Print median, p10 and p90 per call, and the ratio to the single server's same shape."""
    print(f"{'call':<56} {'median':>8} {'p10':>8} {'p90':>8}  vs one server")
    base: dict[str, float] = {}
    for name, values in times.items():
        shape, where = name.split(", ", 1)
        median = statistics.median(values)
        deciles = statistics.quantiles(values, n=10)
        if where.startswith("one server") and shape not in base:
            base[shape] = median
        ratio = f"{median / base[shape]:.2f}x" if shape in base else ""
        print(f"{name:<56} {median:8.1f} {deciles[0]:8.1f} {deciles[-1]:8.1f}  {ratio}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_rtt")
    parser.add_argument("--ops", type=int, default=2000, help="calls of each shape (2000)")
    parser.add_argument("--shards", type=int, default=16, help="shards of get_many (16)")
    args = parser.parse_args(argv)
    server = Server().start()
    cluster = Cluster().start()
    single = redis.Redis(port=server.port)
    client = cluster.client()
    try:
        print(
            f"redis-py {redis.__version__}; one server on :{server.port}; cluster of "
            f"{len(cluster.masters())} masters + {len(cluster.replicas())} replicas; "
            f"{args.ops} calls each, {ROUNDS} interleaved rounds; µs"
        )
        report(measure(shapes(single, client, args.shards), args.ops))
    finally:
        single.close()
        client.close()
        cluster.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
