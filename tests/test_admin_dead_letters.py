"""The dead letters' admin: listed, looked at, retried and discarded by permission."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import override_settings

from django_cachestrat.models import DeadLetter
from django_cachestrat.write_behind import flusher
from tests.models import PageStats
from tests.redis_server import unreachable_caches

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/admin/django_cachestrat/deadletter/"


@pytest.fixture
def letters(settings):
    """Two rows whose increments cannot be written (the rows were deleted behind our back)."""
    rows = [PageStats.objects.create(path=f"/d{i}") for i in range(2)]
    for row in rows:
        PageStats.objects.increment_behind(row.pk, views=5)
    PageStats.objects.filter(pk__in=[r.pk for r in rows])._raw_delete(using="default")
    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "MAX_RETRIES": 1}):
        flusher.flush()
    assert DeadLetter.objects.count() == 2
    return rows, list(DeadLetter.objects.order_by("pk"))


def staff(client, *codenames):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


def act(client, action, letters):
    return client.post(
        URL, {"action": action, "_selected_action": [str(x.pk) for x in letters]}, follow=True
    )


def test_listed_and_shown_read_only(client, letters):
    _, (first, _) = letters
    staff(client, "view_deadletter")
    page = client.get(URL).content.decode()
    assert "tests.pagestats" in page and "RowMissing" in page
    detail = client.get(f"{URL}{first.pk}/change/").content.decode()
    assert "views" in detail and "5" in detail  # the deltas it holds
    assert 'name="_save"' not in detail  # nothing to edit
    assert client.get(f"{URL}add/").status_code == 403


def test_retry_puts_the_writes_back_and_says_so(client, letters):
    rows, (first, second) = letters
    staff(client, "view_deadletter", "change_deadletter")
    PageStats.objects.create(pk=rows[0].pk, path="/d0")  # the row is back
    page = act(client, "retry", [first]).content.decode()
    assert "Put 1 dead letter(s) back in the write-behind queue" in page
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [second.pk]
    flusher.flush()
    assert PageStats.objects.get(pk=rows[0].pk).views == 5


def test_retry_with_redis_down_keeps_the_letter_and_says_so(client, letters):
    _, (first, _) = letters
    staff(client, "view_deadletter", "change_deadletter")
    with override_settings(CACHES=unreachable_caches()):
        page = act(client, "retry", [first]).content.decode()
    assert "Kept 1 dead letter(s)" in page
    assert DeadLetter.objects.filter(pk=first.pk).exists()


def test_discard_forgets_them(client, letters):
    _, both = letters
    staff(client, "view_deadletter", "delete_deadletter")
    page = act(client, "discard", both).content.decode()
    assert "Discarded 2 dead letter(s)" in page
    assert DeadLetter.objects.count() == 0


def test_actions_need_their_permission(client, letters):
    _, both = letters
    staff(client, "view_deadletter")
    page = client.get(URL).content.decode()
    assert 'value="retry"' not in page and 'value="discard"' not in page
    act(client, "retry", both)
    act(client, "discard", both)
    assert DeadLetter.objects.count() == 2
    client.logout()
    assert client.get(URL).status_code == 302  # to the login page
