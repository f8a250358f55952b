"""The consistent-hash ring over several Redis nodes (``CACHESTRAT["NODES"]``).

Placement is checked on the app's own ``Placement`` (100,000 keys); the rest runs on real
Redis servers this module starts (with append-only files, so a killed node comes back
with its data), one django-redis cache alias a node.
"""

import logging
import time
import uuid

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_cachestrat import backends, conf, dashboard, keys, options
from django_cachestrat.backends import ring as ring_module
from django_cachestrat.backends.ring import Placement, Record
from django_cachestrat.write_behind import flusher
from tests.models import Author, Book, PageStats
from tests.redis_server import Server, caches_at

PREFIX = "cstest"
COOLDOWN = 0.2

# -- placement (no server) ---------------------------------------------------------------

TAGS = [keys.hash_tag(keys.entry(PREFIX, "tests.book", pk)) for pk in range(100_000)]


def ring_of(count, weights=None):
    return Placement([(f"n{i}", (weights or {}).get(f"n{i}", 1)) for i in range(count)])


def shares(placement):
    counted = {alias: 0 for alias, _ in placement.nodes}
    for tag in TAGS:
        counted[placement.owner(tag)] += 1
    return counted


def test_adding_a_fifth_node_moves_a_fifth_of_the_keys_and_only_to_it():
    four, five = ring_of(4), ring_of(5)
    moved = [tag for tag in TAGS if four.owner(tag) != five.owner(tag)]
    assert abs(len(moved) / len(TAGS) - 1 / 5) <= 0.02
    assert {five.owner(tag) for tag in moved} == {"n4"}


@pytest.mark.parametrize("count", [4, 5])
def test_equal_nodes_hold_within_ten_percent_of_the_mean(count):
    mean = len(TAGS) / count
    assert all(abs(n - mean) <= 0.1 * mean for n in shares(ring_of(count)).values())


def test_weights_are_respected():
    counted = shares(ring_of(4, {"n0": 3}))  # 3 parts of 6
    assert abs(counted["n0"] / len(TAGS) - 0.5) <= 0.05
    for alias in ("n1", "n2", "n3"):
        assert abs(counted[alias] / len(TAGS) - 1 / 6) <= 0.05 / 3


def test_removing_a_node_moves_only_its_keys():
    four, three = ring_of(4), ring_of(3)
    for tag in TAGS:
        if four.owner(tag) != "n3":
            assert three.owner(tag) == four.owner(tag)


@pytest.mark.parametrize("pk", [7, "a b{c}", uuid.UUID(int=5), "x" * 300])
def test_every_key_of_a_row_has_the_row_tag(pk):
    label = "tests.pagestats"
    names = [
        keys.entry(PREFIX, label, pk),
        *keys.entries(PREFIX, label, [pk]),
        keys.lease(PREFIX, label, pk),
        keys.gone(PREFIX, label, pk),
        *keys.fill(PREFIX, label, pk),
        *keys.writes(PREFIX, label, pk),
        *keys.behind_row(PREFIX, label, pk).values(),
        *keys.behind_batch_row(PREFIX, label, pk, "b1"),
        *keys.behind_cut(PREFIX, label, pk, "c1"),
        keys.behind_row_tag(PREFIX, label, pk) + ":anything",
    ]
    assert len({keys.hash_tag(name) for name in names}) == 1
    placement = ring_of(5)
    assert len({placement.owner(keys.hash_tag(name)) for name in names}) == 1
    pointer = [keys.lookup(PREFIX, label, "path", pk), *keys.lookup_fill(PREFIX, label, "path", pk)]
    assert len({keys.hash_tag(name) for name in pointer}) == 1


# -- on real nodes -------------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def servers():
    started = [Server(appendonly=True).start() for _ in range(5)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def nodes(servers):
    """The five servers, running and empty."""
    for server in servers:
        if server.process is None or server.process.poll() is not None:
            server.start()
        client = redis.Redis(port=server.port)
        client.flushall()
        client.close()
    yield servers
    for server in servers:
        if server.process.poll() is not None:
            server.start()


def ring(servers, aliases, weights=None, **extra):
    """Settings for a ring of ``aliases`` (``n0``... for each server; all in CACHES)."""
    caches = {"default": settings.CACHES["default"]}
    for i, server in enumerate(servers):
        caches[f"n{i}"] = caches_at(server.url, timeout=0.3)["default"]
    named = [{"alias": a, "weight": weights[a]} if weights and a in weights else a for a in aliases]
    return override_settings(
        CACHES=caches,
        CACHESTRAT={"KEY_PREFIX": PREFIX, "FAILURE_COOLDOWN": COOLDOWN, "NODES": named, **extra},
    )


def node_of(model, pk):
    """The alias of the node the configured ring puts row ``pk`` of ``model`` on."""
    cfg = conf.settings()
    entry = keys.entry(cfg.KEY_PREFIX, options.get(model).label, pk)
    return backends.get(cfg.CACHE_ALIAS).node(entry).name


def client_of(servers, alias):
    return redis.Redis(port=servers[int(alias[1:])].port)


def queries(fn):
    with CaptureQueriesContext(connection) as captured:
        result = fn()
    return len(captured), result


def titles(pks):
    return {pk: book.title for pk, book in Book.objects.get_many_cached(pks).items()}


def rebalance(*args):
    call_command("cachestrat_rebalance", *args, stdout=open("/dev/null", "w"))  # noqa: SIM115


FOUR = ["n0", "n1", "n2", "n3"]


@pytestmark_db
def test_rows_live_on_their_node_and_many_rows_read_one_round_trip_a_node(nodes, sends):
    with ring(nodes, FOUR):
        rebalance()
        books = [Book.objects.create(title=f"t{i}", isbn=f"i{i}") for i in range(40)]
        pks = [b.pk for b in books]
        titles(pks)  # fills
        for pk in pks:
            entry = keys.entry(PREFIX, "tests.book", pk)
            holders = [a for a in FOUR if client_of(nodes, a).exists(entry)]
            assert holders == [node_of(Book, pk)]
        assert len({node_of(Book, pk) for pk in pks}) == 4
        sends.clear()
        count, found = queries(lambda: titles(pks))
        assert count == 0 and len(found) == 40
        assert len(sends) == 4  # one MGET a node: its version and its rows' entries
        sends.clear()
        assert Book.objects.get_cached(pk=pks[0]).title == "t0"
        assert len(sends) == 1  # a hit is one round trip on a ring too


@pytestmark_db
def test_a_node_down_degrades_only_its_rows_and_misses_no_write(nodes):
    with ring(nodes, FOUR):
        rebalance()
        books = [Book.objects.create(title=f"t{i}", isbn=f"i{i}") for i in range(40)]
        authors = [Author.objects.create(name=f"a{i}", email=f"{i}@x.org") for i in range(40)]
        pages = [PageStats.objects.create(path=f"/p{i}") for i in range(40)]
        book_pks, author_pks, page_pks = ([o.pk for o in objs] for objs in (books, authors, pages))
        titles(book_pks)
        Author.objects.get_many_cached(author_pks)
        PageStats.objects.get_many_cached(page_pks)
        assert queries(lambda: titles(book_pks))[0] == 0
        down = [b.pk for b in books if node_of(Book, b.pk) == "n1"]
        up = [pk for pk in book_pks if pk not in down]
        assert down and up
        nodes[1].kill()
        count, found = queries(lambda: titles(book_pks))  # no error: its rows from the database
        assert count == 1 and len(found) == 40
        assert queries(lambda: titles(up))[0] == 0  # the other nodes still hit
        # Writes to its rows while it is down, of each strategy.
        Book.objects.filter(pk=down[0]).update(title="changed")
        book = Book.objects.get(pk=down[1])
        book.title = "saved"
        book.save()
        Book.objects.get(pk=down[2]).delete()
        a_down = [pk for pk in author_pks if node_of(Author, pk) == "n1"]
        author = Author.objects.get(pk=a_down[0])
        author.name = "renamed"
        author.save()  # write-through: cannot store, drops the row (kept for replay)
        p_down = [pk for pk in page_pks if node_of(PageStats, pk) == "n1"]
        page = PageStats.objects.get_cached(pk=p_down[0])
        page.note = "down"
        page.save()  # write-behind: Redis unreachable, written to the database now
        assert PageStats.objects.increment_behind(p_down[1], views=3) is False
        assert titles([down[0]]) == {down[0]: "changed"}
        # Back with its data (the old entries included): the invalidations it missed are
        # replayed before anything is read from it.
        nodes[1].start()
        stale = client_of(nodes, "n1").exists(keys.entry(PREFIX, "tests.book", down[0]))
        assert stale  # the old entry is there until the replay
        time.sleep(COOLDOWN + 0.1)
        after = titles(book_pks)
        assert after[down[0]] == "changed" and after[down[1]] == "saved"
        assert down[2] not in after
        assert Author.objects.get_cached(pk=a_down[0]).name == "renamed"
        assert PageStats.objects.get_cached(pk=p_down[0]).note == "down"
        assert PageStats.objects.get_cached(pk=p_down[1]).views == 3
        assert backends.get("default").pending_invalidations == 0
        assert queries(lambda: titles(book_pks))[0] == 0  # and it serves again


@pytestmark_db
def test_a_node_removed_then_added_back_serves_no_row_written_meanwhile(nodes):
    with ring(nodes, FOUR):
        rebalance()
        pks = [Book.objects.create(title=f"t{i}", isbn=f"i{i}").pk for i in range(60)]
        titles(pks)
        moved = [pk for pk in pks if node_of(Book, pk) == "n3"]
    with ring(nodes, FOUR[:3]):  # n3 leaves (its alias stays in CACHES)
        assert queries(lambda: titles(pks))[0] >= 1  # not settled yet: the database
        rebalance()
        assert titles(pks) == {pk: f"t{i}" for i, pk in enumerate(pks)}
        for pk in moved:
            Book.objects.filter(pk=pk).update(title="written while n3 was out")
        count, _ = queries(lambda: titles(pks))  # the moved rows, filled on their new nodes:
        assert 1 <= count <= 3  # a query for each node that missed some
    old = client_of(nodes, "n3").get(keys.entry(PREFIX, "tests.book", moved[0]))
    assert old is not None  # n3 still holds what it cached before it left
    with ring(nodes, FOUR):  # n3 is back
        before = titles(pks)  # n3 is marked retired: its rows come from the database
        assert all(before[pk] == "written while n3 was out" for pk in moved)
        rebalance()
        after = titles(pks)
        assert all(after[pk] == "written while n3 was out" for pk in moved)
        assert queries(lambda: titles(pks))[0] == 0


@pytestmark_db
def test_a_node_out_during_its_removal_is_not_trusted_when_it_comes_back(nodes):
    # The same ring as at first, so the same fingerprint: only the epoch tells n3's
    # record (written before it was removed) from the others'.
    with ring(nodes, FOUR):
        rebalance()
        pks = [Book.objects.create(title=f"t{i}", isbn=f"i{i}").pk for i in range(60)]
        titles(pks)
        moved = [pk for pk in pks if node_of(Book, pk) == "n3"]
    nodes[3].kill()
    with ring(nodes, FOUR[:3]):
        with pytest.raises(CommandError, match="'n3' cannot be reached"):
            rebalance()
        rebalance("--force")
        Book.objects.filter(pk__in=moved).update(title="new")
    nodes[3].start()  # with its old entries and its old record
    with ring(nodes, FOUR):
        assert all(titles(pks)[pk] == "new" for pk in moved)
        rebalance()
        assert all(titles(pks)[pk] == "new" for pk in moved)


@pytestmark_db
def test_a_weight_changed_and_back_serves_no_row_written_meanwhile(nodes):
    with ring(nodes, FOUR):
        rebalance()
        pks = [Book.objects.create(title=f"t{i}", isbn=f"i{i}").pk for i in range(80)]
        titles(pks)
        where = {pk: node_of(Book, pk) for pk in pks}
    with ring(nodes, FOUR, weights={"n0": 4}):
        rebalance()
        gained = [pk for pk in pks if node_of(Book, pk) == "n0" and where[pk] != "n0"]
        assert gained
        titles(pks)
        Book.objects.filter(pk__in=gained).update(title="while n0 weighed more")
    with ring(nodes, FOUR):  # the rows go back to nodes that still hold their old entries
        rebalance()
        assert all(titles(pks)[pk] == "while n0 weighed more" for pk in gained)


@pytestmark_db
def test_rebalance_drops_gained_rows_flushes_new_nodes_drains_and_says_so(nodes, capsys):
    with ring(nodes, FOUR):
        call_command("cachestrat_rebalance")
        assert "settled at epoch 1" in capsys.readouterr().out
        call_command("cachestrat_rebalance")
        assert "settled already" in capsys.readouterr().out
        pks = [Book.objects.create(title=f"t{i}", isbn=f"i{i}").pk for i in range(60)]
        titles(pks)
        pages = [PageStats.objects.create(path=f"/p{i}").pk for i in range(20)]
        for pk in pages:
            assert PageStats.objects.increment_behind(pk, views=2) is True
        where = {pk: node_of(Book, pk) for pk in pks}
        stray = client_of(nodes, "n4")
        stray.set(f"{PREFIX}:{{tests.book:{pks[0]}}}:entry", b"from an earlier ring")
    with ring(nodes, [*FOUR, "n4"]):
        gains = [pk for pk in pks if node_of(Book, pk) == "n4"]
        call_command("cachestrat_rebalance")
        out = capsys.readouterr().out
        assert "Drained 20 write-behind row(s)" in out
        assert "n4: new to the ring (or back): dropped its 1 key(s)" in out
        assert sorted(PageStats.objects.values_list("views", flat=True)) == [2] * 20
        assert all(
            not client_of(nodes, a).exists(f"{PREFIX}:{{tests.pagestats}}:wb:dirty") for a in FOUR
        )
        for a in FOUR:  # their entries stay, on the nodes that keep the rows
            kept = [pk for pk in pks if where[pk] == a and pk not in gains]
            assert all(
                client_of(nodes, a).exists(keys.entry(PREFIX, "tests.book", pk)) for pk in kept
            )
        record = Record.loads(client_of(nodes, "n4").get(keys.ring_record(PREFIX)))
        assert (record.epoch, record.node) == (2, "n4")
    with ring(nodes, FOUR):  # n4 leaves: n0..n3 gain its rows back, and drop what they held
        call_command("cachestrat_rebalance")
        out = capsys.readouterr().out
        assert "n4: left the ring, marked retired" in out
        for pk in gains:
            assert not client_of(nodes, where[pk]).exists(keys.entry(PREFIX, "tests.book", pk))
        retired = Record.loads(client_of(nodes, "n4").get(keys.ring_record(PREFIX)))
        assert retired.ring == "retired"


@pytestmark_db
def test_an_unsettled_node_reads_the_database_and_still_takes_deletions(nodes, caplog):
    with ring(nodes, FOUR):
        rebalance()
        pks = [Book.objects.create(title=f"t{i}", isbn=f"i{i}").pk for i in range(40)]
        titles(pks)
        mine = [pk for pk in pks if node_of(Book, pk) == "n2"]
        n2 = client_of(nodes, "n2")
        # Another ring's rebalance wrote n2's record (a deploy done in the wrong order).
        n2.set(keys.ring_record(PREFIX), Record("other", 9, "n2", (("n2", 1),)).dumps())
        backends.reset()  # a process that starts now
        caplog.clear()  # (the statistics' thread may have used the ring before the rebalance)
        with caplog.at_level(logging.ERROR, logger="django_cachestrat"):
            assert queries(lambda: titles(pks))[0] >= 1
            assert queries(lambda: titles(pks))[0] >= 1
        warned = [
            r.getMessage() for r in caplog.records if "cachestrat_rebalance" in r.getMessage()
        ]
        assert len(warned) == 4  # once a node: the newer epoch unsettles the other three too
        entry = keys.entry(PREFIX, "tests.book", mine[0])
        assert n2.exists(entry)
        Book.objects.filter(pk=mine[0]).update(title="x")
        assert not n2.exists(entry)  # deletions always reach it


@pytestmark_db
def test_a_node_back_empty_gets_its_record_again_and_serves(nodes, monkeypatch):
    monkeypatch.setattr(ring_module, "SETTLED_RECHECK", 0.3)
    with ring(nodes, FOUR):
        rebalance()
        pks = [Book.objects.create(title=f"t{i}", isbn=f"i{i}").pk for i in range(40)]
        titles(pks)
        client = client_of(nodes, "n1")
        client.flushall()  # its data is lost (as a restart without persistence loses it)
        nodes[1].kill()
        nodes[1].start()
        time.sleep(0.4)
        # n1 has no record: this process, which saw it settled, writes it back (an empty
        # node holds nothing stale); a process that never saw it would wait for a rebalance.
        assert titles(pks) == {pk: f"t{i}" for i, pk in enumerate(pks)}
        if queries(lambda: titles(pks))[0]:  # its breaker was open for a moment
            time.sleep(COOLDOWN + 0.1)
            titles(pks)
        assert queries(lambda: titles(pks))[0] == 0
        assert Record.loads(client_of(nodes, "n1").get(keys.ring_record(PREFIX))).node == "n1"
        backends.reset()  # a process that starts now trusts it too
        assert queries(lambda: titles(pks))[0] == 0


@pytestmark_db
def test_each_node_queue_is_flushed_and_a_node_down_holds_back_only_its_rows(nodes):
    with ring(nodes, FOUR):
        rebalance()
        pks = [PageStats.objects.create(path=f"/p{i}").pk for i in range(40)]
        for pk in pks:
            assert PageStats.objects.increment_behind(pk, views=1) is True
        down = [pk for pk in pks if node_of(PageStats, pk) == "n3"]
        nodes[3].kill()
        report = flusher.flush()
        assert report.rows["tests.pagestats"] == len(pks) - len(down)
        in_db = dict(PageStats.objects.values_list("pk", "views"))
        assert all(in_db[pk] == (0 if pk in down else 1) for pk in pks)
        nodes[3].start()
        time.sleep(COOLDOWN + 0.1)
        flusher.flush()
        assert set(PageStats.objects.values_list("views", flat=True)) == {1}


@pytestmark_db
def test_the_dashboard_shows_each_node(nodes):
    with ring(nodes, FOUR):
        rebalance()
        nodes[2].kill()
        overview = dashboard.overview()
        states = {node["node"]: node["state"] for node in overview.nodes}
        assert states == {"n0": "up", "n1": "up", "n2": "down", "n3": "up"}
        assert overview.server["nodes"] == "3 of 4 up"
        assert any("'n2' cannot be reached" in p for p in overview.problems)


@pytestmark_db
def test_during_a_rolling_deploy_the_old_ring_sees_the_new_rings_writes(nodes):
    with ring(nodes, FOUR):  # the old ring: settled, its processes cache rows
        rebalance()
        pks = [Book.objects.create(title=f"t{i}", isbn=f"i{i}").pk for i in range(80)]
        titles(pks)
        old_home = {pk: node_of(Book, pk) for pk in pks}
    with ring(nodes, [*FOUR, "n4"]):  # a process of the new ring, before the rebalance
        moving = [pk for pk in pks if node_of(Book, pk) == "n4"]
        assert moving
        assert queries(lambda: titles(pks))[0] >= 1  # it reads the database
        Book.objects.filter(pk__in=moving).update(title="by the new ring")
        for pk in moving:  # its invalidations reached the rows' nodes in the old ring too
            entry = keys.entry(PREFIX, "tests.book", pk)
            assert not client_of(nodes, old_home[pk]).exists(entry)
    with ring(nodes, FOUR):  # a process of the old ring, still running
        assert all(titles(pks)[pk] == "by the new ring" for pk in moving)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (["n0", "nowhere"], r"names 'nowhere', which is not in CACHES"),
        (["n0", "n0"], r"names 'n0' twice"),
        (["n0", {"alias": "n1", "weight": 0}], r"weight of 'n1' must be an int >= 1, not 0"),
        (["n0", {"alias": "n1", "weight": 1.5}], r"weight of 'n1' must be an int >= 1, not 1.5"),
        (["n0", {"alias": "n1", "wieght": 2}], r"unknown keys wieght"),
        (["n0", 3], r"entries are aliases of CACHES"),
        ("n0,n1", r"'NODES'\] must be list or tuple, not str"),
    ],
)
def test_wrong_nodes_are_named(nodes, message):
    from django.core.exceptions import ImproperlyConfigured

    caches = {alias: caches_at("redis://127.0.0.1:1/0")["default"] for alias in ("n0", "n1")}
    with override_settings(CACHES=caches, CACHESTRAT={"NODES": nodes}):
        with pytest.raises(ImproperlyConfigured, match=message):
            conf.settings()


def test_one_node_or_none_is_one_server_with_no_ring():
    caches = {alias: caches_at("redis://127.0.0.1:1/0")["default"] for alias in ("default", "n1")}
    for nodes in ([], ["n1"]):
        with override_settings(CACHES=caches, CACHESTRAT={"NODES": nodes}):
            transport = backends.get("default")
            assert type(transport) is backends.RedisTransport
            assert transport.name == (nodes[0] if nodes else "default")
