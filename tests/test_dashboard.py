"""The admin's cache dashboard: figures of a known workload, chart, actions and permissions."""

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.test import override_settings

from django_cachestrat import backends, stats
from tests.models import Author, Book, PageStats
from tests.redis_server import unreachable_caches

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/admin/django_cachestrat/cachedashboard/"


def user(client, *codenames, staff=True):
    who = User.objects.create_user("u", password="pw", is_staff=staff)
    who.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(who)
    return who


@pytest.fixture
def workload():
    """3 hits and 2 misses of Book (one a "no such row"), nothing read of Author."""
    stats.reset()
    book = Book.objects.create(title="t", isbn="1")
    Author.objects.create(name="a", email="a@example.org")
    Book.objects.get_cached(pk=book.pk)  # a miss (the create dropped the row), a fill
    for _ in range(3):
        Book.objects.get_cached(pk=book.pk)
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=book.pk + 100)
    stats.flush()
    return book


def row_of(page, label):
    match = re.search(rf'<tr data-model="{re.escape(label)}">(.*?)</tr>', page, re.S)
    assert match, f"no row for {label}"
    return re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)


def test_the_dashboard_is_reached_from_the_admin_index(client):
    user(client, "view_cache_stats")
    index = client.get("/admin/").content.decode()
    assert URL in index and "Cache dashboard" in index


def test_it_shows_every_cached_model_with_exact_counts_and_a_chart(client, workload):
    user(client, "view_cache_stats")
    page = client.get(URL).content.decode()
    cells = row_of(page, "tests.Book")
    assert cells[:3] == ["tests.Book", "cache-aside", "3600"]
    assert cells[3:6] == ["3", "2", "60.0%"]  # hits, misses, hit rate
    assert row_of(page, "tests.Author")[3:5] == ["0", "0"]
    assert row_of(page, "tests.PageStats")[1] == "write-behind"
    assert "<polyline" in page  # the hit-rate and request charts, drawn by the server
    card = re.search(r'id="overall-hit-rate">(.*?)</div>', page, re.S).group(1)
    assert "<strong>60.0%</strong>" in card
    # One server's memory; on a ring or a cluster, a line per node (per master).
    servers = backends.get("default").servers
    assert ("Redis memory" in page) == (len(servers) == 1)
    assert len(servers) == 1 or all(server.name in page for server in servers)
    assert 'value="tests.Book"' not in page  # no action without manage_cache
    assert "need the <code>django_cachestrat.manage_cache</code> permission" in page
    assert client.get(URL + "?period=24h").status_code == 200


def test_anonymous_is_sent_to_login_and_staff_without_permission_is_refused(client):
    assert client.get(URL).status_code == 302
    assert client.get(URL)["Location"].startswith("/admin/login/")
    user(client)
    assert client.get(URL).status_code == 403


def test_actions_need_manage_cache_even_for_staff(client, workload):
    user(client, "view_cache_stats")
    for action in ("invalidate", "flush", "reset"):
        assert client.post(f"{URL}{action}/", {"model": "tests.Book"}).status_code == 403
    assert stats.snapshot()["tests.Book"]["hits"] == 3  # nothing was reset


def test_invalidate_drops_the_model_and_says_so(client, workload, django_assert_num_queries):
    user(client, "view_cache_stats", "manage_cache")
    page = client.post(f"{URL}invalidate/", {"model": "tests.Book"}, follow=True)
    assert "Invalidated tests.Book" in page.content.decode()
    with django_assert_num_queries(1):  # the next read misses
        Book.objects.get_cached(pk=workload.pk)
    page = client.post(f"{URL}invalidate/", {"model": "Bok"}, follow=True).content.decode()
    assert "Unknown model" in page
    assert client.get(f"{URL}invalidate/").status_code == 405  # POST only


def test_flush_and_reset_say_what_they_did(client, workload):
    user(client, "view_cache_stats", "manage_cache")
    page_stats = PageStats.objects.create(path="/p")
    PageStats.objects.increment_behind(page_stats.pk, views=2)
    page = client.post(f"{URL}flush/", follow=True).content.decode()
    assert "Flushed 1 write-behind row(s) in 1 batch(es)" in page
    assert PageStats.objects.get(pk=page_stats.pk).views == 2
    page = client.post(f"{URL}reset/", follow=True).content.decode()
    assert "Reset the statistics" in page
    assert stats.snapshot()["tests.Book"]["hits"] == 0


def test_redis_down_is_said_not_raised(client):
    user(client, "view_cache_stats", "manage_cache")
    with override_settings(CACHES=unreachable_caches()):
        page = client.get(URL).content.decode()
        assert "could not be read from Redis" in page
        assert "Redis cannot be reached" in page
        flushed = client.post(f"{URL}reset/", follow=True).content.decode()
    assert "Statistics not reset" in flushed


def test_series_all_adds_up_every_model_in_one_read(workload, sends):
    per_model = {m: stats.series(m, minutes=5) for m in stats.models_counted()}
    sends.clear()
    summed = stats.series_all(minutes=5)
    assert len(sends) == 1  # one round trip for every model's buckets
    assert sum(p["hits"] for p in summed) == 3
    assert sum(p["misses"] for p in summed) == 2
    for i, point in enumerate(summed):
        assert point["hits"] == sum(s[i]["hits"] for s in per_model.values())
