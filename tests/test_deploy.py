"""A rolling deploy: processes of two schemas (one field apart) share Redis and the database.

This process has the new schema; ``old`` is a process of the old one (tests/old_schema.py).
Whichever schema wrote a row's entry or view, a committed write of the other reaches it:
the next read in either process is not stale. Each schema reads only its own entries (the
other's are misses, refilled), and a flush of writes naming a field the flusher's model
lacks writes the rest and keeps those as a dead letter.
"""

import pytest

from django_cachestrat.models import DeadLetter
from django_cachestrat.write_behind import flusher
from tests.models import Meter, Release
from tests.old_schema import OldSchema

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def old():
    process = OldSchema()
    yield process
    process.close()


@pytest.fixture
def release():
    return Release.objects.create(name="v1", code="r1")


def test_a_write_through_store_of_the_new_schema_reaches_the_old_schemas_entry(old, release):
    assert old.call("get", model="Release", pk=release.pk)["name"] == "v1"  # cached, old schema
    release.name = "v2"
    release.save()
    assert old.call("get", model="Release", pk=release.pk)["name"] == "v2"
    assert old.call("get", model="Release", lookup={"code": "r1"})["name"] == "v2"


def test_a_write_through_store_of_the_old_schema_reaches_the_new_schemas_entry(old, release):
    assert Release.objects.get_cached(pk=release.pk).name == "v1"  # cached, new schema
    old.call("save", model="Release", pk=release.pk, values={"name": "v2"})
    assert Release.objects.get_cached(pk=release.pk).name == "v2"
    assert Release.objects.get_cached(code="r1").name == "v2"


def test_an_update_reaches_the_other_schemas_entry(old, release):
    old.call("get", model="Release", pk=release.pk)
    Release.objects.filter(pk=release.pk).update(name="v2")
    assert old.call("get", model="Release", pk=release.pk)["name"] == "v2"
    Release.objects.get_cached(pk=release.pk)
    old.call("update", model="Release", pk=release.pk, values={"name": "v3"})
    assert Release.objects.get_cached(pk=release.pk).name == "v3"


def test_a_delete_reaches_the_other_schemas_entry(old, release):
    other = Release.objects.create(name="w1", code="r2")
    old.call("get", model="Release", pk=release.pk)
    release.delete()
    assert old.call("get", model="Release", pk=release.pk) is None
    Release.objects.get_cached(pk=other.pk)
    old.call("delete", model="Release", pk=other.pk)
    with pytest.raises(Release.DoesNotExist):
        Release.objects.get_cached(pk=other.pk)


def test_each_schema_reads_its_own_entry_and_refills_over_the_others(
    old, release, django_assert_num_queries
):
    release.added = 7
    release.save()  # the new schema's entry, with added
    with django_assert_num_queries(0):
        assert Release.objects.get_cached(pk=release.pk).added == 7
    assert old.call("get", model="Release", pk=release.pk) == {
        "id": release.pk,
        "name": "v1",
        "code": "r1",
    }  # a miss for it: it stored its own entry
    with django_assert_num_queries(1):  # a miss here now, which refills
        assert Release.objects.get_cached(pk=release.pk).added == 7
    with django_assert_num_queries(0):
        assert Release.objects.get_cached(pk=release.pk).added == 7


@pytest.fixture
def meter():
    return Meter.objects.create(count=0, label="m")


def test_write_behind_writes_of_either_schema_reach_the_others_view(old, meter):
    assert old.call("get", model="Meter", pk=meter.pk)["count"] == 0  # the old schema's view
    Meter.objects.increment_behind(meter.pk, count=1)
    assert old.call("get", model="Meter", pk=meter.pk)["count"] == 1
    old.call("increment", model="Meter", pk=meter.pk, deltas={"count": 2})
    assert Meter.objects.get_cached(pk=meter.pk).count == 3
    old.call("save", model="Meter", pk=meter.pk, values={"label": "old"})
    got = Meter.objects.get_cached(pk=meter.pk)
    assert (got.count, got.label) == (3, "old")
    got.label = "new"
    got.save()  # a full save of the new schema, over the old schema's view
    assert old.call("get", model="Meter", pk=meter.pk) == {
        "id": meter.pk,
        "count": 3,
        "label": "new",
    }
    Meter.objects.increment_behind(meter.pk, count=4)
    assert old.call("get", model="Meter", pk=meter.pk)["count"] == 7
    flusher.flush()
    meter.refresh_from_db()
    assert (meter.count, meter.label) == (7, "new")
    assert Meter.objects.get_cached(pk=meter.pk).count == 7
    assert old.call("get", model="Meter", pk=meter.pk)["count"] == 7


def test_an_old_schema_flush_keeps_writes_of_a_field_it_lacks_as_a_dead_letter(old, meter):
    got = Meter.objects.get_cached(pk=meter.pk)
    got.added = 5
    got.save()  # pending: every field, added among them
    Meter.objects.increment_behind(meter.pk, count=2)
    report = old.call("flush")  # the old schema's worker has no added column
    assert report["dead_letters"] == 1
    meter.refresh_from_db()
    assert (meter.count, meter.added) == (2, None)  # the rest is written
    (letter,) = DeadLetter.objects.all()
    assert "added" in letter.error and "another schema" in letter.error
    # Nothing is lost: a process of the new schema puts it back, and its flush writes it.
    flusher.retry_dead_letter(letter)
    flusher.flush()
    meter.refresh_from_db()
    assert (meter.count, meter.added) == (2, 5)
    assert Meter.objects.get_cached(pk=meter.pk).added == 5


def test_pending_writes_of_a_field_one_schema_lacks_break_no_read_and_are_flushed(old, meter):
    Meter.objects.filter(pk=meter.pk).update(added=1)
    # Pending: increments of count and of added, which the old schema does not have.
    Meter.objects.increment_behind(meter.pk, added=2, count=1)
    assert old.call("get", model="Meter", pk=meter.pk) == {"id": meter.pk, "count": 1, "label": "m"}
    old.call("increment", model="Meter", pk=meter.pk, deltas={"count": 3})
    old.call("save", model="Meter", pk=meter.pk, values={"label": "x"})
    assert flusher.flush().dead_letters == 0  # this schema has every field
    meter.refresh_from_db()
    assert (meter.count, meter.label, meter.added) == (4, "x", 3)
