"""Signed entries, pointers and write-behind writes: bytes the app did not write are never used.

Forgeries are written with a plain client (``raw_redis``), as anyone who can reach Redis
could: bytes edited in place, a genuine value copied from another row's key, bytes signed
with a key the app does not list.
"""

import logging
import time

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_cachestrat import conf, keys, options, signing, stats
from django_cachestrat.models import DeadLetter
from django_cachestrat.tasks import flush_write_behind
from django_cachestrat.write_behind import flusher
from tests.conftest import nodes_of, unsigned
from tests.models import Author, Book, Member
from tests.worker import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

OLD = "an old signing secret, 32 chars."
NEW = "the new signing secret, 32 chars"


def signing_keys(*secrets, **more):
    """``override_settings`` of CACHESTRAT with these SIGNING_KEYS (None: from SECRET_KEY)."""
    value = list(secrets) if secrets else None
    return override_settings(CACHESTRAT={**settings.CACHESTRAT, "SIGNING_KEYS": value, **more})


def entry(model, pk):
    return keys.entry("cstest", options.get(model).label, pk)


def same_node(*names):
    """Whether the keys are on one node: on a ring (``CACHESTRAT_TEST_RING``) an entry
    copied to another node carries the version of the node it came from, a silent miss."""
    return len(nodes_of(*names)) == 1


def errors(label):
    """The statistics' error count of a model, with this process's counts sent first."""
    stats.flush()
    return stats.snapshot(fresh=True)[label]["errors"]


@pytest.fixture(autouse=True)
def fresh_stats():
    stats.reset()
    yield
    stats.reset()


@pytest.fixture
def books():
    first = Book.objects.create(title="Dune", isbn="1")
    second = Book.objects.create(title="Emma", isbn="2")
    assert Book.objects.get_many_cached([first.pk, second.pk])  # both cached
    return first, second


# -- entries -------------------------------------------------------------------------------


def test_an_entry_edited_in_redis_is_a_reported_miss(books, raw_redis, events, caplog):
    book = books[0]
    key = entry(Book, book.pk)
    raw_redis.set(key, raw_redis.get(key).replace(b"Dune", b"Fake"), keepttl=True)
    with caplog.at_level(logging.WARNING, logger="django_cachestrat"):
        got = Book.objects.get_cached(pk=book.pk)
    assert got.title == "Dune"  # the database's, not the forgery
    assert events("error", Book) == 1
    assert "MAC does not verify" in caplog.text
    assert errors("tests.Book") == 1
    assert Book.objects.get_cached(pk=book.pk).title == "Dune"  # refilled with good bytes


def test_an_entry_signed_with_another_key_is_a_reported_miss(books, raw_redis, events):
    book = books[0]
    key = entry(Book, book.pk)
    body = unsigned(key, raw_redis.get(key)).replace(b"Dune", b"Fake")
    forger = signing.Signer.from_secrets(["a key the app does not list, 32c"])
    raw_redis.set(key, forger.tag(signing.ENTRY, key.encode(), body) + body)
    assert Book.objects.get_cached(pk=book.pk).title == "Dune"
    assert events("error", Book) == 1


def test_a_valid_entry_copied_to_another_rows_key_is_a_miss(
    books, raw_redis, events, django_assert_num_queries
):
    first, second = books
    raw_redis.set(entry(Book, second.pk), raw_redis.get(entry(Book, first.pk)))
    with django_assert_num_queries(1):  # the database answers
        got = Book.objects.get_many_cached([first.pk, second.pk])
    assert (got[first.pk].title, got[second.pk].title) == ("Dune", "Emma")
    assert got[second.pk].pk == second.pk
    if same_node(entry(Book, first.pk), entry(Book, second.pk)):
        assert events("error", Book) == 1
        assert errors("tests.Book") == 1


def test_a_no_such_row_entry_copied_onto_a_row_is_a_miss(books, raw_redis, events):
    book = books[0]
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=999_999)  # caches "no such row" under 999999's key
    raw_redis.set(entry(Book, book.pk), raw_redis.get(entry(Book, 999_999)))
    assert Book.objects.get_cached(pk=book.pk).title == "Dune"  # not DoesNotExist
    if same_node(entry(Book, book.pk), entry(Book, 999_999)):
        assert events("error", Book) == 1


def test_a_write_through_store_copied_to_another_rows_key_is_a_miss(raw_redis, events):
    ann = Author.objects.create(name="Ann", email="ann@example.org")
    bob = Author.objects.create(name="Bob", email="bob@example.org")
    for author in (ann, bob):
        author.age = 40
        author.save()  # stored by the write-through save, after its commit
    assert raw_redis.exists(entry(Author, ann.pk)) and raw_redis.exists(entry(Author, bob.pk))
    raw_redis.set(entry(Author, bob.pk), raw_redis.get(entry(Author, ann.pk)))
    got = Author.objects.get_cached(pk=bob.pk)
    assert (got.pk, got.name) == (bob.pk, "Bob")
    if same_node(entry(Author, ann.pk), entry(Author, bob.pk)):
        assert events("error", Author) == 1


def test_an_entry_put_back_after_its_time_is_a_silent_miss(raw_redis, events):
    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "DEFAULT_TTL": 1}):
        book = Book.objects.create(title="Dune", isbn="1")
        Book.objects.get_cached(pk=book.pk)
        key = entry(Book, book.pk)
        kept = raw_redis.get(key)  # a copy taken while it was genuine
        Book.objects.filter(pk=book.pk).update(title="Emma")  # invalidates
        # Put back within its TTL, a copy is accepted: a replay no MAC can tell from the
        # entry (the README's Security section says so). Past its TTL, it is refused.
        time.sleep(1.2)
        raw_redis.set(key, kept)
        assert Book.objects.get_cached(pk=book.pk).title == "Emma"
    assert events("error", Book) == 0  # refused as an expired entry is: not an error


# -- lookup pointers -------------------------------------------------------------------------


def test_a_pointer_copied_from_another_value_is_a_reported_miss(raw_redis, events):
    ann = Author.objects.create(name="Ann", email="ann@example.org")
    bob = Author.objects.create(name="Bob", email="bob@example.org")
    for author in (ann, bob):
        Author.objects.get_cached(email=author.email)
    to_ann = keys.lookup("cstest", "tests.author", "email", "ann@example.org")
    to_bob = keys.lookup("cstest", "tests.author", "email", "bob@example.org")
    raw_redis.set(to_bob, raw_redis.get(to_ann))
    assert Author.objects.get_cached(email="bob@example.org").pk == bob.pk
    assert events("error", Author) == 1
    assert errors("tests.Author") == 1


def test_a_forged_no_such_row_pointer_is_a_reported_miss(raw_redis, events):
    ann = Author.objects.create(name="Ann", email="ann@example.org")
    Author.objects.get_cached(email=ann.email)
    pointer = keys.lookup("cstest", "tests.author", "email", "ann@example.org")
    for forged in [b"-", str(ann.pk + 1).encode()]:  # "no such row", and another pk
        raw_redis.set(pointer, forged)
        assert Author.objects.get_cached(email="ann@example.org").pk == ann.pk
    assert events("error", Author) == 2


# -- write-behind views and pending writes -----------------------------------------------------


def test_a_view_value_copied_from_another_row_is_a_reported_miss(raw_redis, events):
    staff = Member.objects.create(name="root", is_staff=True)
    guest = Member.objects.create(name="guest")
    Member.objects.get_many_cached([staff.pk, guest.pk])
    view = entry(Member, guest.pk)
    raw_redis.hset(view, "is_staff", raw_redis.hget(entry(Member, staff.pk), "is_staff"))
    assert Member.objects.get_cached(pk=guest.pk).is_staff is False
    assert events("error", Member) == 1


@pytest.fixture
def members():
    """Two write-behind rows, each with a genuine pending save and increments."""
    staff = Member.objects.create(name="root", is_staff=True, level=9)
    guest = Member.objects.create(name="guest")
    for member in (staff, guest):
        cached = Member.objects.get_cached(pk=member.pk)
        cached.name += "!"
        cached.is_staff = not cached.is_staff  # a pending write of is_staff on each row
        cached.save()
        cached.is_staff = not cached.is_staff
        cached.save()  # back: the pending value of is_staff is the row's own again
        Member.objects.increment_behind(member.pk, logins=2)
        Member.objects.increment_behind(member.pk, logins=1)
    return staff, guest


def pending_keys(member):
    return keys.behind_row("cstest", options.get(Member).label, member.pk)


def forge(raw_redis, staff, guest):
    """Flip the guest's pending is_staff with the staff row's signed value; raise a counter."""
    theirs, mine = pending_keys(staff), pending_keys(guest)
    raw_redis.hset(mine["fields"], "is_staff", raw_redis.hget(theirs["fields"], "is_staff"))
    raw_redis.hincrby(mine["deltas"], "logins", 1000)


def test_a_forged_pending_write_is_dead_lettered_and_the_rest_flushed(
    members, raw_redis, caplog, events
):
    staff, guest = members
    forge(raw_redis, staff, guest)
    with caplog.at_level(logging.ERROR, logger="django_cachestrat"):
        report = flusher.flush()
    assert report.rows == {"tests.member": 2}
    assert report.dead_letters == 1
    assert events("error", Member) == 1 and errors("tests.Member") == 1
    written = Member.objects.get(pk=guest.pk)
    # The genuine writes are in the database; the forged ones are not.
    assert (written.name, written.is_staff, written.logins) == ("guest!", False, 3)
    assert Member.objects.get(pk=staff.pk).logins == 3
    (letter,) = DeadLetter.objects.all()
    assert (letter.model, letter.object_pk) == ("tests.member", str(guest.pk))
    assert letter.error.startswith("ForgedWrite: ")
    assert "is_staff" in letter.error and "logins" in letter.error
    assert letter.saved_fields() == {} and letter.deltas == {}  # nothing a retry could write
    assert "do not verify" in caplog.text
    # The guest's view showed the forgery: dropped, so the next read is the database's.
    assert Member.objects.get_cached(pk=guest.pk).logins == 3


def test_a_forged_pending_write_is_not_written_by_a_celery_worker(
    members, raw_redis, celery_worker
):
    staff, guest = members
    forge(raw_redis, staff, guest)
    flush_write_behind.delay()
    wait_until(lambda: DeadLetter.objects.exists(), what=celery_worker.log)
    wait_until(lambda: flusher.waiting() == {}, what="the batch to be acknowledged")
    written = Member.objects.get(pk=guest.pk)
    assert (written.name, written.is_staff, written.logins) == ("guest!", False, 3)
    assert "is_staff" in DeadLetter.objects.get().error


def test_forged_increment_records_count_for_nothing(members, raw_redis):
    staff, guest = members
    deltas = pending_keys(guest)["deltas"]
    records = keys.behind_increments(deltas, "logins")
    genuine = raw_redis.lrange(records, 0, -1)
    # A copy of a genuine record (counted once), another row's record, and garbage; and
    # the sum raised to match, as an attacker who knows the layout would.
    raw_redis.rpush(
        records,
        genuine[0],
        *raw_redis.lrange(keys.behind_increments(pending_keys(staff)["deltas"], "logins"), 0, -1),
        b"junk",
    )
    raw_redis.hincrby(deltas, "logins", 2 + 3)
    flusher.flush()
    assert Member.objects.get(pk=guest.pk).logins == 3
    assert "do not verify" in DeadLetter.objects.get().error


def test_an_unsigned_pending_value_is_dead_lettered(members, raw_redis):
    guest = members[1]
    from django_cachestrat import codec

    raw_redis.hset(pending_keys(guest)["fields"], "level", codec.encode_value(99))
    flusher.flush()
    assert Member.objects.get(pk=guest.pk).level == 1
    assert "level" in DeadLetter.objects.get().error


def test_a_counter_must_be_declared_to_be_incremented():
    member = Member.objects.create(name="m")
    with pytest.raises(ValueError, match=r"CacheMeta.counters.*tests.Member.level"):
        Member.objects.increment_behind(member.pk, level=1)


# -- keys --------------------------------------------------------------------------------------


def test_key_rotation_reads_old_entries_while_the_old_key_is_listed(
    raw_redis, events, django_assert_num_queries
):
    with signing_keys(OLD):
        book = Book.objects.create(title="Dune", isbn="1")
        Book.objects.get_cached(pk=book.pk)
        Author.objects.create(name="Ann", email="ann@example.org")
        Author.objects.get_cached(email="ann@example.org")
        member = Member.objects.create(name="m")
        Member.objects.increment_behind(member.pk, logins=5)
    old_entry = raw_redis.get(entry(Book, book.pk))
    with signing_keys(NEW, OLD):  # the new key first: it signs, the old one still verifies
        with django_assert_num_queries(0):
            assert Book.objects.get_cached(pk=book.pk).title == "Dune"
            assert Author.objects.get_cached(email="ann@example.org").name == "Ann"
        Member.objects.increment_behind(member.pk, logins=1)  # signed with the new key
        flusher.flush()  # the old key's increment and the new key's: both verify
        assert Member.objects.get(pk=member.pk).logins == 6
        Book.objects.filter(pk=book.pk).update(title="Emma")
        Book.objects.get_cached(pk=book.pk)  # refilled: signed with the new key
    new_entry = raw_redis.get(entry(Book, book.pk))
    key = entry(Book, book.pk).encode()
    new_signer, old_signer = (signing.Signer.from_secrets([s]) for s in (NEW, OLD))
    assert new_signer.verifies(signing.ENTRY, key, new_entry[16:], new_entry[:16])
    assert not old_signer.verifies(signing.ENTRY, key, new_entry[16:], new_entry[:16])
    assert old_signer.verifies(signing.ENTRY, key, old_entry[16:], old_entry[:16])
    assert events("error") == 0
    with signing_keys(NEW):  # the old key dropped: what it signed is a reported miss
        raw_redis.set(entry(Book, book.pk), old_entry)
        assert Book.objects.get_cached(pk=book.pk).title == "Emma"
        assert Author.objects.get_cached(email="ann@example.org").name == "Ann"
    assert events("error", Book) == 1 and events("error", Author) == 1


def test_the_default_key_comes_from_secret_key_and_its_fallbacks(events):
    book = Book.objects.create(title="Dune", isbn="1")
    Book.objects.get_cached(pk=book.pk)  # signed with a key derived from SECRET_KEY
    with override_settings(SECRET_KEY="a newer secret", SECRET_KEY_FALLBACKS=["tests-only"]):
        assert Book.objects.get_cached(pk=book.pk).title == "Dune"
        assert events("error") == 0
    with override_settings(SECRET_KEY="a newer secret"):
        assert Book.objects.get_cached(pk=book.pk).title == "Dune"
        assert events("error", Book) == 1  # signed with a key no longer accepted


# -- signing off -------------------------------------------------------------------------------


def test_signing_off_stores_plain_entries_and_still_works(raw_redis, events):
    off = override_settings(CACHESTRAT={**settings.CACHESTRAT, "SIGN": False})
    book = Book.objects.create(title="Dune", isbn="1")
    Book.objects.get_cached(pk=book.pk)  # signed
    with off:
        assert Book.objects.get_cached(pk=book.pk).title == "Dune"  # a silent miss, refilled
        fingerprint = options.get(Book).fingerprint.encode()
        assert raw_redis.get(entry(Book, book.pk)).startswith(fingerprint)  # no MAC
        assert Book.objects.get_cached(isbn="1").pk == book.pk
        assert raw_redis.get(keys.lookup("cstest", "tests.book", "isbn", "1")) == b"%d" % book.pk
        member = Member.objects.create(name="m")
        cached = Member.objects.get_cached(pk=member.pk)
        cached.is_staff = True
        cached.save()
        Member.objects.increment_behind(member.pk, logins=4)
        flusher.flush()
        assert Member.objects.get(pk=member.pk).is_staff is True
        assert Member.objects.get(pk=member.pk).logins == 4
    assert events("error") == 0


def test_signing_off_is_a_warning():
    from django_cachestrat.checks import check_settings

    assert check_settings() == []
    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "SIGN": False}):
        assert [w.id for w in check_settings()] == ["cachestrat.W003"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"SIGN": "yes"}, r"'SIGN'\] must be bool, not str"),
        ({"SIGNING_KEYS": "one secret of 32 characters...."}, r"must be list or tuple"),
        ({"SIGNING_KEYS": []}, r"'SIGNING_KEYS'\] is empty"),
        ({"SIGNING_KEYS": [NEW, 42]}, r"'SIGNING_KEYS'\]\[1\] must be str or bytes, not int"),
        ({"SIGNING_KEYS": ["short"]}, r"'SIGNING_KEYS'\]\[0\] is 5 long; .* at least 16"),
        ({"SIGN": False, "SIGNING_KEYS": ["short"]}, r"at least 16"),
        ({"KEY_PREFIX": "a\nb"}, r"'KEY_PREFIX'\] must not contain a newline"),
    ],
)
def test_signing_settings_are_checked(values, message):
    with override_settings(CACHESTRAT=values):
        with pytest.raises(ImproperlyConfigured, match=message):
            conf.settings()


def test_counters_are_checked():
    from django.db import models
    from django.test.utils import isolate_apps

    from django_cachestrat import WriteBehindMixin
    from django_cachestrat.options import errors

    with isolate_apps("tests"):

        class Wrong(WriteBehindMixin, models.Model):
            name = models.CharField(max_length=5)

            class CacheMeta:
                counters = ["name", "nope"]

    assert errors(Wrong) == [
        "tests.Wrong.CacheMeta.counters: 'name' is not an integer field other than the "
        "primary key.",
        "tests.Wrong.CacheMeta.counters: 'nope' is not a field of tests.Wrong.",
    ]
