"""``manage.py cachestrat_write_behind list``: pending rows and dead letters, as text and JSON."""

import datetime as dt
import json
import time
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_cachestrat import keys
from django_cachestrat.models import DeadLetter
from django_cachestrat.write_behind import flusher, inspect
from django_cachestrat.write_behind.queue import Queue
from tests.models import PageStats, Visit
from tests.redis_server import unreachable_caches

pytestmark = pytest.mark.django_db(transaction=True)

SEEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def tick():
    # Rows are listed by when they were first written, in ms: keep those apart.
    time.sleep(0.005)


@pytest.fixture
def queue_state(settings):
    """Rows of two models in every state the listing tells apart, newest last."""
    letter_row, retried, claimed, plain = (
        PageStats.objects.create(path=f"/{name}") for name in ("dead", "retried", "b", "a")
    )
    visit = Visit.objects.create(label="v")
    # A dead letter: the row is gone from the database, and one failure is the limit.
    PageStats.objects.increment_behind(letter_row.pk, views=5)
    PageStats.objects.filter(pk=letter_row.pk)._raw_delete(using="default")
    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "MAX_RETRIES": 1}):
        flusher.flush([PageStats])
    # A retried row: failed once, put back for a minute.
    before_retried = dt.datetime.now(dt.UTC)
    PageStats.objects.increment_behind(retried.pk, likes=2)
    PageStats.objects.filter(pk=retried.pk)._raw_delete(using="default")
    retry = {**settings.CACHESTRAT, "MAX_RETRIES": 5, "RETRY_BACKOFF": 60}
    tick()
    with override_settings(CACHESTRAT=retry):
        flusher.flush([PageStats])
    tick()
    # A row in a batch a worker claimed and did not finish, written again since.
    stats = PageStats.objects.get_cached(pk=claimed.pk)
    stats.note = "bb"
    stats.save()
    batch = Queue(PageStats).claim(10, visibility=3600)
    assert batch is not None and batch.pks == [claimed.pk]
    PageStats.objects.increment_behind(claimed.pk, views=1)
    tick()
    # A plain pending row: a save and increments.
    stats = PageStats.objects.get_cached(pk=plain.pk)
    stats.note = "hello"
    stats.last_seen = SEEN
    stats.save()
    PageStats.objects.increment_behind(plain.pk, views=3)
    tick()
    # Another model's row, with a long value and a Decimal.
    got = Visit.objects.get_cached(pk=visit.pk)
    got.label = "L" * 300
    got.rate = Decimal("2.50")
    got.save()
    Visit.objects.increment_behind(visit.pk, hits=2)
    return {
        "letter": DeadLetter.objects.get(),
        "letter_row": letter_row,
        "retried": retried,
        "before_retried": before_retried,
        "claimed": claimed,
        "batch": batch,
        "plain": plain,
        "visit": visit,
    }


def listing(*args):
    from io import StringIO

    out = StringIO()
    call_command("cachestrat_write_behind", *args, stdout=out)
    return out.getvalue()


def line_of(out, text):
    (line,) = [line for line in out.splitlines() if text in line]
    return line


def test_the_text_listing_shows_every_pending_row_and_dead_letter(queue_state):
    s = queue_state
    out = listing()
    assert "tests.pagestats: 3 row(s) waiting, 1 batch(es) in flight" in out
    assert "tests.visit: 1 row(s) waiting, 0 batch(es) in flight" in out
    assert "Pending rows, newest first (4):" in out

    visit = line_of(out, f"tests.visit pk={s['visit'].pk}")
    assert "label='LLLL" in visit and "…" in visit and "L" * 50 not in visit
    assert "rate=2.50" in visit and "add hits+2" in visit

    plain = line_of(out, f"tests.pagestats pk={s['plain'].pk} ")
    assert "note='hello'" in plain and f"last_seen={SEEN.isoformat()}" in plain
    assert "add views+3" in plain
    assert "retries" not in plain and "batch" not in plain

    claimed = line_of(out, f"tests.pagestats pk={s['claimed'].pk} ")
    assert f"in batch {s['batch'].id}" in claimed
    assert "note='bb'" in claimed and "add views+1" in claimed  # the batch's, then since

    retried = line_of(out, f"tests.pagestats pk={s['retried'].pk} ")
    assert "add likes+2" in retried and "retries 1" in retried
    assert "next retry in 59s" in retried or "next retry in 1m00s" in retried

    rows = out.split("Pending rows")[1].split("dead letter")[0]
    order = [rows.index(line) for line in (visit, plain, claimed, retried)]
    assert order == sorted(order)  # newest first

    letter = s["letter"]
    assert "1 dead letter(s), newest first:" in out
    dead = line_of(out, f"#{letter.pk} tests.pagestats pk={s['letter_row'].pk}")
    assert "after 1 attempt(s): RowMissing" in dead and "ago)" in dead


def test_the_json_listing_is_one_document_of_json_safe_values(queue_state):
    s = queue_state
    before = dt.datetime.now(dt.UTC)
    doc = json.loads(listing("--json"))
    pending = doc["pending"]
    assert pending["total"] == 4
    assert pending["models"] == [
        {"model": "tests.pagestats", "rows": 3, "batches_in_flight": 1},
        {"model": "tests.visit", "rows": 1, "batches_in_flight": 0},
    ]
    visit, plain, claimed, retried = pending["rows"]
    assert visit["pk"] == str(s["visit"].pk) and visit["model"] == "tests.visit"
    assert visit["fields"]["rate"] == "2.50"
    assert len(visit["fields"]["label"]) == 200 and visit["fields"]["label"].endswith("…")
    assert visit["deltas"] == {"hits": 2}

    assert plain["pk"] == s["plain"].pk
    assert plain["fields"] == {"note": "hello", "last_seen": SEEN.isoformat()}
    assert plain["deltas"] == {"views": 3}
    assert (plain["retries"], plain["next_retry"], plain["batch"]) == (0, None, None)

    assert claimed["batch"] == s["batch"].id
    assert (claimed["fields"], claimed["deltas"]) == ({"note": "bb"}, {"views": 1})

    assert retried["retries"] == 1
    next_retry = dt.datetime.fromisoformat(retried["next_retry"])
    assert before + dt.timedelta(seconds=50) < next_retry < before + dt.timedelta(seconds=61)
    # Its age runs from its first write, not from when it was put back.
    since = dt.datetime.fromisoformat(retried["since"])
    assert s["before_retried"] - dt.timedelta(milliseconds=5) <= since <= before
    assert retried["age_seconds"] >= 0.01
    for row in pending["rows"]:
        dt.datetime.fromisoformat(row["since"])

    letters = doc["dead_letters"]
    assert letters["total"] == 1
    (letter,) = letters["rows"]
    assert letter["id"] == s["letter"].pk
    assert (letter["model"], letter["pk"]) == ("tests.pagestats", str(s["letter_row"].pk))
    assert letter["error"].startswith("RowMissing") and letter["attempts"] == 1
    assert letter["deltas"] == {"views": 5}
    assert dt.datetime.fromisoformat(letter["created_at"]) <= before


def test_model_and_limit_choose_what_is_listed(queue_state):
    s = queue_state
    out = listing("--model", "tests.Visit")
    assert f"tests.visit pk={s['visit'].pk}" in out
    assert "tests.pagestats" not in out
    assert "0 dead letter(s)" in out  # the dead letter is a PageStats row's

    doc = json.loads(listing("--json", "--limit", "2"))
    assert doc["pending"]["total"] == 4
    assert [r["model"] for r in doc["pending"]["rows"]] == ["tests.visit", "tests.pagestats"]
    out = listing("--limit", "1")
    assert "... and 3 more (--limit)" in out

    with pytest.raises(CommandError, match="not a write-behind model"):
        listing("--model", "tests.Author")
    with pytest.raises(CommandError, match="Unknown model"):
        listing("--model", "tests.Nope")
    with pytest.raises(CommandError, match=r"not 'Pagestat'\. Did you mean tests\.PageStats\?"):
        listing("--model", "Pagestat")
    assert listing("--model", "visit") == listing("--model", "tests.Visit")  # a bare name
    with pytest.raises(CommandError, match="--limit"):
        listing("--limit", "-1")


def test_an_empty_queue_says_so():
    assert listing().splitlines() == ["No pending write-behind writes.", "", "0 dead letter(s)"]
    doc = json.loads(listing("--json"))
    assert doc == {
        "pending": {"total": 0, "models": [], "rows": []},
        "dead_letters": {"total": 0, "rows": []},
    }


def test_redis_unreachable_is_a_clear_error():
    with (
        override_settings(CACHES=unreachable_caches()),
        pytest.raises(CommandError, match="Redis cannot be reached"),
    ):
        listing()


def test_when_a_row_was_first_written_is_forgotten_once_it_is_flushed(settings, raw_redis):
    first = keys.behind_model("cstest", "tests.pagestats")["first"]
    rows = [PageStats.objects.create(path=f"/f{i}") for i in range(3)]
    for row in rows:
        PageStats.objects.increment_behind(row.pk, views=1)
    # Claimed: each row's time moves to the first hash.
    batch = Queue(PageStats).claim(10, visibility=3600)
    assert raw_redis.hlen(first) == 3
    # Put back with a delay (as after a failure), then the rows' writes all superseded
    # by a direct write, or deleted: nothing left, so nothing kept.
    Queue(PageStats).requeue(batch, [r.pk for r in rows], 60)
    assert raw_redis.hlen(first) == 3
    PageStats.objects.filter(pk=rows[0].pk).update(views=0)
    rows[1].delete()
    assert raw_redis.hkeys(first) == [str(rows[2].pk).encode()]
    # A row flushed (claimed again once its retry time came, then acknowledged).
    raw_redis.zadd(keys.behind_model("cstest", "tests.pagestats")["dirty"], {rows[2].pk: 0})
    assert flusher.flush([PageStats]).rows == {"tests.pagestats": 1}
    assert raw_redis.hlen(first) == 0
    # And a row written while its batch flushes is timed from that write.
    PageStats.objects.increment_behind(rows[2].pk, views=1)
    batch = Queue(PageStats).claim(10, visibility=3600)
    tick()
    PageStats.objects.increment_behind(rows[2].pk, views=1)
    written = time.time()
    Queue(PageStats).ack(batch, [rows[2].pk], 60)  # as a worker that wrote the batch

    (row,) = inspect.inspect([PageStats]).rows
    assert abs(row.since.timestamp() - written) < 0.5
    assert row.since.timestamp() > batch_time(batch.id)
    assert (row.batch, row.deltas) == (None, {"views": 1})


def batch_time(batch_id):
    return int(batch_id.split("-")[0], 16) / 1000
