"""The ring section of the benchmark (``python -m bench.run --only ring``).

A ring of three Redis nodes (servers this section starts, one django-redis alias each,
``CACHESTRAT["NODES"]``) against one server (the benchmark's ``default``), in one run:
``get_cached(pk=)`` hits and ``get_many_cached(100)`` hits of ``bench.models.CacheAsideItem``
(PostgreSQL). Both transports are built once and the variants swap which one the cache
alias uses (one dict write, in every variant alike), so the interleaved rounds compare
the two on the same rows, with no set-up in between. The goal: a hit through the ring
within 1.1x of one server's. A bulk read is one ``MGET`` per node (three round trips,
not one): its ratio is reported, with no goal.

It also times what a ring's bulk read could do instead of one ``MGET`` after another (one
per node holding some of the rows): the three ``MGET`` s sent from a thread pool, in plain
redis-py with no code of ours, to say whether sending them concurrently would pay.
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor

from bench.run import Row, create_schema, interleaved, prime, print_summary, print_table, seed

NODES = 3
GOAL = 1.1


def swapped(transports: dict, alias: str, manager, pks: list, chunks: list) -> tuple:
    """Return ``get(transport)`` and ``many(transport)``: ops that first make ``transport``
    the cache alias's (one dict write), then read one row by pk, or a chunk of rows."""

    def get(transport):
        def op(i):
            transports[alias] = transport
            return manager.get_cached(pk=pks[i % len(pks)])

        return op

    def many(transport):
        def op(i):
            transports[alias] = transport
            got = manager.get_many_cached(chunks[i % len(chunks)])
            assert len(got) == len(chunks[0])
            return got

        return op

    return get, many


def run_section(args: argparse.Namespace, started: bool) -> list[str]:
    from django.conf import settings
    from django.test import override_settings

    from bench.models import CacheAsideItem
    from django_cachestrat import backends, conf, keys, options, rebalance
    from tests.redis_server import Server

    servers = [Server().start() for _ in range(NODES)]
    caches = dict(settings.CACHES)
    for i, server in enumerate(servers):
        caches[f"ring{i}"] = {**settings.CACHES["default"], "LOCATION": server.url}
    aliases = [f"ring{i}" for i in range(NODES)]
    pool = ThreadPoolExecutor(NODES)
    try:
        with override_settings(CACHES=caches, CACHESTRAT={**settings.CACHESTRAT, "NODES": aliases}):
            cfg = conf.settings()
            model = CacheAsideItem
            create_schema([model])
            pks = seed([model], args.rows)[model]
            rebalance.run()
            alias = cfg.CACHE_ALIAS
            ring = backends.get(alias)
            single = backends.connect(alias)
            transports = backends._transports  # the bench swaps them; the app never does
            size = args.bulk_size
            chunks = [pks[i : i + size] for i in range(0, len(pks) - size + 1, size)]
            for transport in (single, ring):
                transports[alias] = transport
                prime(model, pks, size)

            get, many = swapped(transports, alias, model.objects, pks, chunks)

            # The floor of a ring's bulk read: its MGETs, one after another or at once.
            label = options.get(model).label
            version = keys.version(cfg.KEY_PREFIX, label)
            plans = []
            for chunk in chunks:
                names = keys.entries(cfg.KEY_PREFIX, label, chunk)
                plans.append(
                    [
                        (node._client, [version, *(names[j] for j in where)])
                        for node, where in ring.split(names)
                    ]
                )

            def mgets_in_turn(i):
                return [client.mget(names) for client, names in plans[i % len(plans)]]

            def mgets_at_once(i):
                calls = [pool.submit(c.mget, n) for c, n in plans[i % len(plans)]]
                return [call.result() for call in calls]

            point = interleaved(
                {"ring": get(ring), "single": get(single)},
                args.rounds,
                args.point_batch,
                warmup=500,
            )
            bulk = interleaved(
                {
                    "ring": many(ring),
                    "single": many(single),
                    "in turn": mgets_in_turn,
                    "at once": mgets_at_once,
                },
                args.rounds,
                args.bulk_batch,
                warmup=20,
            )
            transports[alias] = ring
    finally:
        pool.shutdown()
        backends.reset()
        for server in servers:
            server.stop()
    rows = [
        Row(f"get_cached(pk=) hit, {NODES}-node ring / one server", point, "ring", "single", GOAL),
        Row(f"get_many_cached({size}) hit, ring / one server", bulk, "ring", "single", None),
        Row(
            f"{NODES} MGETs at once (threads) / in turn, redis-py", bulk, "at once", "in turn", None
        ),
    ]
    print(f"Ring of {NODES} nodes (servers of its own) against one server:")
    print_table(rows)
    medians = {name: statistics.median(v) for name, v in bulk.items()}
    print(
        f"  bulk read floors: {NODES} MGETs in turn {medians['in turn']:.1f} µs, at once "
        f"{medians['at once']:.1f} µs (the ring sends them in turn)"
    )
    missed = [row.label for row in rows if row.passed is False]
    return print_summary(missed, "ring")
