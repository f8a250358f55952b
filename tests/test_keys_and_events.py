import re

import pytest
from django.db import models
from django.test.utils import isolate_apps

from django_cachestrat import CacheAsideMixin, CachedManager, keys, options, signals
from tests.models import Book, Novel


def hash_tag(key):
    return re.search(r"\{([^}]*)\}", key).group(1)


def test_plain_values_stay_readable_and_unsafe_ones_are_hashed():
    assert keys.token(42) == "42"
    assert keys.token("a@b.org") == "a@b.org"
    for unsafe in ["with space", "ünï", "{x}", "a:b", "x" * 65, "", "#abc"]:
        token = keys.token(unsafe)
        assert token.startswith("#") and len(token) == 33
    assert keys.token("a b") != keys.token("a  b")
    # A literal never looks like a hash: '#' is not a safe character.
    assert not keys.token("abc").startswith("#")


def test_a_rows_keys_share_one_hash_tag():
    pk = "any {value}: with spaces"
    tags = {
        hash_tag(keys.entry("p", "app.model", pk)),
        hash_tag(keys.lease("p", "app.model", pk)),
        hash_tag(keys.gone("p", "app.model", pk)),
        *(hash_tag(k) for k in keys.writes("p", "app.model", pk)),
    }
    assert len(tags) == 1
    assert hash_tag(keys.entry("p", "app.model", 1)) != hash_tag(keys.entry("p", "app.model", 2))
    assert hash_tag(keys.version("p", "app.model")) == "app.model"


def test_fingerprint_follows_the_fields(monkeypatch):
    from django_cachestrat import codec

    assert codec.fingerprint(Book) == codec.fingerprint(Book)
    assert codec.fingerprint(Book) != codec.fingerprint(Novel)  # more fields
    before = codec.fingerprint(Book)
    monkeypatch.setattr(Book._meta.get_field("isbn"), "get_internal_type", lambda: "TextField")
    assert codec.fingerprint(Book) != before  # a field's type changed
    monkeypatch.undo()
    monkeypatch.setattr(codec, "CODEC_FORMAT", "codec-next")
    assert codec.fingerprint(Book) != before  # the codec's format changed


@pytest.mark.django_db(transaction=True)
def test_events_are_not_sent_when_nobody_listens(monkeypatch):
    sent = []
    for name in ("cache_hit", "cache_miss", "cache_fill", "cache_invalidate", "cache_error"):
        signal = getattr(signals, name)
        assert signal.receivers == []
        monkeypatch.setattr(signal, "send", lambda *a, _n=name, **k: sent.append(_n))
    book = Book.objects.create(title="t", isbn="1")
    Book.objects.get_cached(pk=book.pk)
    Book.objects.get_cached(pk=book.pk)
    book.delete()
    assert sent == []


@isolate_apps("tests")
def test_composite_primary_key_is_refused():
    composite = getattr(models, "CompositePrimaryKey", None)
    if composite is None:
        pytest.skip("this Django has no composite primary keys")

    class Pair(CacheAsideMixin, models.Model):
        pk = composite("a", "b")
        a = models.IntegerField()
        b = models.IntegerField()
        objects = CachedManager()

        class Meta:
            app_label = "tests"

    assert any("composite" in p for p in options.errors(Pair))


def test_entries_are_the_entry_keys_of_each_pk():
    import uuid

    pks = [1, "a b", uuid.UUID(int=5), 10**30]
    assert keys.entries("p", "app.m", pks) == [keys.entry("p", "app.m", pk) for pk in pks]
