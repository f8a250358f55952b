"""Statistics: counted in process, added up in Redis across threads and processes."""

import io
import json
import subprocess
import sys
import threading

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import override_settings

from django_cachestrat import invalidate_model, stats
from django_cachestrat.counters import recorder
from django_cachestrat.write_behind import flusher
from tests.conftest import child_env
from tests.models import Author, Book, PageStats, Plain
from tests.worker import ROOT, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

#: Every key of a model's snapshot, as the README documents them.
SNAPSHOT_KEYS = {
    *recorder.COUNTERS,
    "hit_rate",
    "strategy",
    "ttl",
    "entries",
    "bytes",
    "entries_exact",
    "pending_rows",
    "oldest_pending_age",
    "dead_letters",
}


@pytest.fixture(autouse=True)
def fresh_stats():
    stats.reset()
    yield
    stats.reset()


def book(n=1):
    return Book.objects.create(title="t", isbn=f"isbn-{n}")


def counted(label):
    """The fleet's figures of one model, with this process's counts sent first."""
    stats.flush()
    return stats.snapshot(fresh=True)[label]


def test_a_known_workload_is_counted_exactly():
    b = book()
    stats.reset()  # the create's invalidation is not part of the workload
    Book.objects.get_cached(pk=b.pk)  # miss, fill
    for _ in range(4):
        Book.objects.get_cached(pk=b.pk)  # hits
    for _ in range(2):
        with pytest.raises(Book.DoesNotExist):
            Book.objects.get_cached(pk=999_999)  # a miss that caches "no such row", then a hit
    assert set(Book.objects.get_many_cached([b.pk, 999_999])) == {b.pk}  # two hits

    figures = counted("tests.Book")

    assert set(figures) == SNAPSHOT_KEYS
    assert figures["hits"] == 7
    assert figures["misses"] == 2
    assert figures["negative_hits"] == 2
    assert figures["fills"] == 2
    assert figures["hit_rate"] == pytest.approx(7 / 9)
    assert figures["strategy"] == "cache-aside"
    assert figures["entries"] == 2  # the row and the "no such row"
    assert figures["entries_exact"] is True
    assert figures["bytes"] > 0
    assert figures["pending_rows"] is None
    assert stats.snapshot()["tests.Author"]["hits"] == 0
    assert stats.since() is not None


def test_invalidations_and_write_through_stores_are_counted():
    b = book()
    stats.reset()
    b.title = "u"
    b.save()
    invalidate_model(Book)
    Author.objects.create(name="a", email="a@example.org")

    assert counted("tests.Book")["invalidations"] == 1
    assert counted("tests.Book")["model_invalidations"] == 1
    assert counted("tests.Author")["write_through_stores"] == 1


def test_series_has_one_bucket_a_minute_and_adds_up_to_the_totals():
    b = book()
    stats.reset()
    for _ in range(5):
        Book.objects.get_cached(pk=b.pk)
    stats.flush()

    series = stats.series("tests.book", minutes=3)

    assert len(series) == 3
    assert [p["minute"] - series[0]["minute"] for p in series] == [0, 60, 120]
    assert series[-1]["time"].endswith("+00:00")
    assert set(series[0]) == {"minute", "time", "hit_rate", *recorder.COUNTERS}
    assert sum(p["hits"] for p in series) == 4
    assert sum(p["misses"] for p in series) == 1
    assert all(p["hit_rate"] is None for p in series if not p["hits"] + p["misses"])
    assert stats.series(Book, minutes=1)[0]["minute"] == series[-1]["minute"]


def test_reset_clears_totals_and_buckets(raw_redis):
    b = book()
    Book.objects.get_cached(pk=b.pk)
    stats.flush()
    assert counted("tests.Book")["misses"] == 1

    stats.reset()

    assert counted("tests.Book")["misses"] == 0
    assert sum(p["misses"] for p in stats.series(Book, minutes=5)) == 0
    assert stats.since() is None


def test_bad_input_says_what_is_expected():
    with pytest.raises(ValueError, match=r"Unknown model 'Book'.*Did you mean 'tests.Book'"):
        stats.series("Book")
    with pytest.raises(ValueError, match=r"Unknown model 'tests\.Plain'"):
        stats.series(Plain)
    with pytest.raises(ValueError, match="minutes must be between 1 and STATS_RETENTION"):
        stats.series(Book, minutes=0)
    with pytest.raises(ValueError, match="minutes must be between"):
        stats.series(Book, minutes=24 * 60 + 1)


def test_statistics_off_write_nothing(raw_redis):
    b = book()
    stats.reset()
    with override_settings(CACHESTRAT={**_settings(), "STATS": False}):
        for _ in range(3):
            Book.objects.get_cached(pk=b.pk)
        stats.flush()
        assert list(raw_redis.scan_iter("cstest:{stats}*")) == []
    stats.flush()
    assert counted("tests.Book")["hits"] == 0


def _settings():
    from django.conf import settings

    return settings.CACHESTRAT


def test_threads_counting_at_once_lose_nothing():
    b = warm_book()
    start = threading.Barrier(8)

    def reader():
        start.wait()
        for _ in range(500):
            Book.objects.get_cached(pk=b.pk)

    # The background sender sends while the threads count.
    with override_settings(CACHESTRAT={**_settings(), "STATS_INTERVAL": 0.01}):
        threads = [threading.Thread(target=reader) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert counted("tests.Book")["hits"] == 8 * 500


def test_write_behind_figures():
    page = PageStats.objects.create(path="/a")
    stats.reset()
    page = PageStats.objects.get_cached(pk=page.pk)
    page.views = 3
    page.save()

    figures = counted("tests.PageStats")
    assert figures["behind_writes"] == 1
    assert figures["pending_rows"] == 1
    assert figures["oldest_pending_age"] >= 0
    assert figures["dead_letters"] == 0
    assert figures["strategy"] == "write-behind"

    flusher.drain()
    figures = counted("tests.PageStats")
    assert figures["flushed_rows"] == 1
    assert figures["pending_rows"] == 0


# -- processes ------------------------------------------------------------------------------


def child(mode, pk, n, interval=1.0):
    args = [mode, "tests.Book", *map(str, (pk, n, interval))]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stats_child", *args],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def warm_book():
    """A row already cached, with the statistics reset after its fill."""
    b = book()
    Book.objects.get_cached(pk=b.pk)
    stats.reset()
    return b


def kill_when_counted(process, then=None):
    """Wait for the child's ``counted``, run ``then``, and SIGKILL it (no atexit)."""
    try:
        assert process.stdout.readline().strip() == "counted"
        if then:
            then()
    finally:
        process.kill()
        process.wait()


def finish(process):
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


@pytest.mark.slow
def test_processes_add_up_in_redis():
    b = warm_book()
    first, second = child("exit", b.pk, 25), child("exit", b.pk, 17)
    for _ in range(5):
        Book.objects.get_cached(pk=b.pk)
    finish(first)
    finish(second)

    assert counted("tests.Book")["hits"] == 25 + 17 + 5


@pytest.mark.slow
def test_a_forked_child_starts_with_no_counts():
    b = warm_book()
    finish(child("fork", b.pk, 10))

    assert counted("tests.Book")["hits"] == 20  # the parent's 10 once, the child's 10


@pytest.mark.slow
def test_a_killed_process_keeps_what_its_sender_sent():
    b = warm_book()
    # Sent by the background thread alone: the child never flushes.
    kill_when_counted(
        child("hang", b.pk, 30, interval=0.2),
        then=lambda: wait_until(lambda: counted("tests.Book")["hits"] == 30, timeout=20),
    )
    assert counted("tests.Book")["hits"] == 30


@pytest.mark.slow
def test_a_killed_process_loses_at_most_its_last_interval():
    b = warm_book()
    kill_when_counted(child("flush-then-hang", b.pk, 30, interval=3600))
    assert counted("tests.Book")["hits"] == 30  # the 30 counted after its last send are lost


# -- the command and the views --------------------------------------------------------------


def workload():
    b = book()
    stats.reset()
    for _ in range(3):
        Book.objects.get_cached(pk=b.pk)
    return b


def test_command_prints_json_and_a_table():
    workload()
    out = io.StringIO()
    call_command("cachestrat_stats", "--json", "--fresh", stdout=out)
    report = json.loads(out.getvalue())
    assert report["models"]["tests.Book"]["hits"] == 2
    assert report["models"]["tests.Book"]["misses"] == 1
    assert report["since"]

    out = io.StringIO()
    call_command("cachestrat_stats", stdout=out)
    text = out.getvalue()
    assert "hit rate" in text
    line = next(row for row in text.splitlines() if row.startswith("tests.Book "))
    assert line.split()[1:5] == ["cache-aside", "2", "1", "66.7%"]


def user(*permissions):
    person = User.objects.create_user("u" + str(User.objects.count()), password="pw")
    for codename in permissions:
        person.user_permissions.add(Permission.objects.get(codename=codename))
    return person


def test_the_json_view_needs_the_permission(client):
    workload()
    url = "/cachestrat/stats.json"
    anonymous = client.get(url)
    assert anonymous.status_code == 302
    assert "login" in anonymous["Location"]

    client.force_login(user())
    assert client.get(url).status_code == 403

    client.force_login(user("view_cache_stats"))
    response = client.get(url)
    assert response.status_code == 200
    assert response.json()["models"]["tests.Book"]["hits"] == 2

    series = client.get(url, {"model": "tests.Book", "minutes": "2"}).json()["series"]
    assert len(series) == 2
    assert client.get(url, {"model": "Nope"}).status_code == 400


def test_a_token_lets_a_scraper_in(client):
    workload()
    url = "/cachestrat/stats.json"
    with override_settings(CACHESTRAT={**_settings(), "STATS_TOKEN": "s3cret"}):
        assert client.get(url, HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
        assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION="Bearer s3cret").status_code == 403


def test_prometheus_exposition_parses(client):
    parser = pytest.importorskip("prometheus_client.parser")
    workload()
    client.force_login(user("view_cache_stats"))
    response = client.get("/cachestrat/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in parser.text_string_to_metric_families(response.content.decode())}

    hits = {s.labels["model"]: s.value for s in families["cachestrat_hits"].samples}
    assert hits["tests.Book"] == 2
    assert families["cachestrat_hits"].type == "counter"
    assert {s.name for s in families["cachestrat_misses"].samples} >= {"cachestrat_misses_total"}
    ratio = {s.labels["model"]: s.value for s in families["cachestrat_hit_ratio"].samples}
    assert ratio["tests.Book"] == pytest.approx(2 / 3)
    assert "cachestrat_entries_bytes" in families
    assert "cachestrat_write_behind_pending_rows" in families
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"model", "strategy"}  # no pk in a label

    client.logout()
    assert client.get("/cachestrat/metrics").status_code == 302
