"""The cluster section of the benchmark (``python -m bench.run --only cluster``).

A Redis Cluster of 3 masters with a replica each (``tests.redis_cluster``, started by this
section), reached through ``ClusterConnectionFactory`` with the default ``SHARDS`` (16),
against one server (the benchmark's ``default``), in one run: ``get_cached(pk=)`` hits and
``get_many_cached(100)`` hits of ``bench.models.CacheAsideItem`` (PostgreSQL), the
transports swapped as in the ring section (``bench.ring.swapped``). No goal: the issue
asks for the figure. A hit is one ``MGET`` on one master; a bulk read one ``MGET`` per
shard holding some of the rows, one after another. It also times what ``REPLICA_ACKS``
costs a write-behind write: a write's pipeline with ``WAIT 1`` against the same without.
"""

from __future__ import annotations

import argparse

from bench.ring import swapped
from bench.run import Row, create_schema, interleaved, prime, print_summary, print_table, seed


def run_section(args: argparse.Namespace, started: bool) -> list[str]:
    from django.conf import settings
    from django.test import override_settings

    from bench.models import CacheAsideItem
    from django_cachestrat import backends
    from tests.redis_cluster import Cluster

    cluster = Cluster().start()
    caches = dict(settings.CACHES)
    factory = "django_cachestrat.backends.cluster.ClusterConnectionFactory"
    caches["cluster"] = {
        **settings.CACHES["default"],
        "LOCATION": cluster.url,
        "OPTIONS": {**settings.CACHES["default"].get("OPTIONS", {}), "CONNECTION_FACTORY": factory},
    }
    try:
        with override_settings(
            CACHES=caches, CACHESTRAT={**settings.CACHESTRAT, "CACHE_ALIAS": "cluster"}
        ):
            model = CacheAsideItem
            create_schema([model])
            pks = seed([model], args.rows)[model]
            on_cluster = backends.get("cluster")
            single = backends.connect("default")
            transports = backends._transports  # the bench swaps them; the app never does
            size = args.bulk_size
            chunks = [pks[i : i + size] for i in range(0, len(pks) - size + 1, size)]
            for transport in (single, on_cluster):
                transports["cluster"] = transport
                prime(model, pks, size)
            get, many = swapped(transports, "cluster", model.objects, pks, chunks)
            point = interleaved(
                {"cluster": get(on_cluster), "single": get(single)},
                args.rounds,
                args.point_batch,
                warmup=500,
            )
            bulk = interleaved(
                {"cluster": many(on_cluster), "single": many(single)},
                args.rounds,
                args.bulk_batch,
                warmup=20,
            )
            # What REPLICA_ACKS costs a write-behind write: a WAIT in its pipeline.
            client = on_cluster.nodes[0]._client.cluster
            key = "bench:{cluster|0}:wait"
            master = client.get_node_from_key(key)

            def write(wait):
                def op(i):
                    pipe = client.pipeline(transaction=False)
                    pipe.execute_command("SET", key, i, target_nodes=master)
                    if wait:
                        pipe.execute_command("WAIT", 1, 100, target_nodes=master)
                    return pipe.execute()

                return op

            acks = interleaved(
                {"wait": write(True), "plain": write(False)},
                args.rounds,
                args.write_batch,
                warmup=50,
            )
            transports["cluster"] = on_cluster
            shards = len(on_cluster.nodes)
    finally:
        backends.reset()
        cluster.stop()
    rows = [
        Row("get_cached(pk=) hit, cluster / one server", point, "cluster", "single", None),
        Row(f"get_many_cached({size}) hit, cluster / one server", bulk, "cluster", "single", None),
        Row("a write's pipeline with WAIT 1 / without (REPLICA_ACKS)", acks, "wait", "plain", None),
    ]
    print(f"Redis Cluster (3 masters, a replica each; {shards} shards) against one server:")
    print_table(rows)
    return print_summary([], "cluster")
