"""The app on a Redis Cluster of its own (3 masters, a replica each): a master killed.

The feature suite runs on a cluster with ``CACHESTRAT_TEST_CLUSTER=1`` (see the README);
this module starts a cluster of its own, so it can kill a master, and runs in every mode.
"""

import pytest
from redis.crc import key_slot

from django_cachestrat import backends, keys
from django_cachestrat.backends.cluster import ClusterTransport, placed, shard_of
from django_cachestrat.write_behind import flusher
from tests.models import Book, PageStats
from tests.redis_cluster import Cluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

SHARDS = 6


@pytest.fixture(scope="module")
def cluster():
    started = Cluster().start()
    yield started
    started.stop()


@pytest.fixture
def on_cluster(cluster, settings):
    """The app's cache on ``cluster``, through the cluster connection factory."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": cluster.url,
            "OPTIONS": {
                "CONNECTION_FACTORY": "django_cachestrat.backends.cluster.ClusterConnectionFactory",
                "SOCKET_TIMEOUT": 0.5,
                "SOCKET_CONNECT_TIMEOUT": 0.5,
            },
        }
    }
    settings.CACHESTRAT = {**settings.CACHESTRAT, "SHARDS": SHARDS, "FAILURE_COOLDOWN": 0.3}
    client = cluster.client()
    client.flushall()
    yield client
    client.close()


def entry(model, pk):
    return keys.entry("cstest", model._meta.label_lower, pk)


def test_a_model_s_keys_are_sharded_each_script_on_one_slot(on_cluster):
    transport = backends.get("default")
    assert isinstance(transport, ClusterTransport) and len(transport.nodes) == SHARDS
    row, version = entry(Book, 7), keys.version("cstest", "tests.book")
    shard = shard_of(keys.hash_tag(row), SHARDS)
    # The row and its shard's copy of the model's keys: one hash tag, one slot.
    assert key_slot(placed(row, 0, SHARDS).encode()) == key_slot(
        placed(version, shard, SHARDS).encode()
    )
    slots = {key_slot(placed(version, s, SHARDS).encode()) for s in range(SHARDS)}
    assert len(slots) == SHARDS
    book = Book.objects.create(title="Dune", isbn="1")
    Book.objects.get_cached(pk=book.pk)
    assert on_cluster.get(placed(entry(Book, book.pk), 0, SHARDS)) is not None


def test_after_a_failover_the_app_serves_and_no_acknowledged_write_is_lost(on_cluster, cluster):
    rows = [PageStats.objects.create(path=f"/f{i}", views=0).pk for i in range(30)]
    done = dict.fromkeys(rows, 0)

    def increments(rounds):
        deferred = []
        for _ in range(rounds):
            for pk in rows:
                # Returned: acknowledged (recorded in Redis, or written to the database).
                deferred.append(PageStats.objects.increment_behind(pk, views=1))
                done[pk] += 1
        return set(deferred)

    assert increments(3) == {True}
    dead = cluster.kill_master_of(placed(entry(PageStats, rows[0]), 0, SHARDS))
    # While its replica is not yet promoted, that master's rows go to the database, the
    # others' to Redis.
    assert increments(2) == {True, False}
    cluster.wait_promoted(dead)
    # Back: every row reads without error, and the dead master's rows hit again once its
    # shards' breakers let a call through (FAILURE_COOLDOWN).
    transport = backends.get("default")
    victim = transport.node(entry(PageStats, rows[0]))

    def hits_again():
        PageStats.objects.get_cached(pk=rows[0])
        return victim.available and on_cluster.exists(placed(entry(PageStats, rows[0]), 0, SHARDS))

    wait_for(hits_again, "the dead master's rows to be cached again")
    increments(2)
    for pk in rows:
        assert PageStats.objects.get_cached(pk=pk).views == done[pk]
    while flusher.flush().rows:
        pass
    in_db = dict(PageStats.objects.filter(pk__in=rows).values_list("pk", "views"))
    assert in_db == done
    cluster.restart(dead)


def test_the_cluster_layout_names_back_and_rows_never_spell_a_model_key():
    from django_cachestrat.backends.cluster import unplaced

    label = "tests.pagestats"
    model = [keys.version("cstest", label), *keys.behind_model("cstest", label).values()]
    rows = [
        name
        for pk in (1, "wb", "version", "a b")
        for name in (
            keys.entry("cstest", label, pk),
            *keys.behind_row("cstest", label, pk).values(),
            *keys.writes("cstest", label, pk),
            keys.lookup("cstest", label, "path", pk),
        )
    ]
    stats = list(keys.stats("cstest").values())
    names = list(dict.fromkeys(model + rows + stats))
    for shard in range(SHARDS):
        on_cluster = [placed(name, shard, SHARDS) for name in names]
        assert [unplaced(name) for name in on_cluster] == names
        assert len(set(on_cluster)) == len(on_cluster)
    assert placed(stats[0], 3, SHARDS) == stats[0]  # one slot for the statistics
