"""Browser tests in headless Chromium (``browser_page``) against Django's live server."""

import os

import pytest
from django.contrib.auth.models import Permission

from tests.models import Author, Book

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture
def staff(django_user_model):
    """A staff user who may view authors and books: what the admin index shows them."""
    user = django_user_model.objects.create_user("staff", password="staff-pw", is_staff=True)
    for model in (Author, Book):
        user.user_permissions.add(
            Permission.objects.get(
                codename=f"view_{model._meta.model_name}", content_type__app_label="tests"
            )
        )
    return user


def test_a_staff_user_logs_in_and_sees_the_admin_index(staff, live_server, browser_page, tmp_path):
    page = browser_page
    page.goto(f"{live_server.url}/admin/")
    assert page.url.startswith(f"{live_server.url}/admin/login/")  # anonymous: the login page
    page.fill("#id_username", "staff")
    page.fill("#id_password", "staff-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    assert page.locator("#site-name").inner_text() == "Django administration"
    app = page.locator("#content-main .app-tests")
    assert app.locator("caption").text_content().strip() == "Tests"  # shown in capitals (CSS)
    assert app.locator("th[scope=row]").all_inner_texts() == ["Authors", "Books"]
    shot = tmp_path / "admin-index.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_the_cache_dashboard_shows_a_workload_and_invalidates(
    live_server, browser_page, tmp_path, django_user_model, django_assert_num_queries
):
    from django_cachestrat import stats

    user = django_user_model.objects.create_user("ops", password="ops-pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_cache_stats", "manage_cache"])
    )
    stats.reset()
    books = [Book.objects.create(title=f"b{i}", isbn=str(i)) for i in range(3)]
    for book in books:  # 3 misses (the creates dropped the rows), then 6 hits
        for _ in range(3):
            Book.objects.get_cached(pk=book.pk)
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "ops-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    page.click("text=Cache dashboard")  # from the admin index, under the app's section
    page.wait_for_selector("#cached-models")
    cells = page.locator('tr[data-model="tests.Book"] td').all_inner_texts()
    assert cells[:6] == ["tests.Book", "cache-aside", "3600", "6", "3", "66.7%"]
    assert page.locator("#overall-hit-rate strong").inner_text() == "66.7%"
    assert page.locator(".cs-chart svg polyline").count() == 2  # hit rate and requests
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("CACHESTRAT_SCREENSHOT"):  # the README's picture
        page.screenshot(path=os.environ["CACHESTRAT_SCREENSHOT"], full_page=True)
    page.click('tr[data-model="tests.Book"] button[name=invalidate]')
    page.wait_for_selector(".messagelist")
    assert "Invalidated tests.Book" in page.locator(".messagelist").inner_text()
    with django_assert_num_queries(1):  # the next read is a miss
        Book.objects.get_cached(pk=books[0].pk)


def test_the_dashboards_actions_are_refused_without_the_permission(
    live_server, browser_page, django_user_model
):
    user = django_user_model.objects.create_user("viewer", password="v-pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_cache_stats"))
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/django_cachestrat/cachedashboard/")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", "v-pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#cached-models")
    assert page.locator("button[name=invalidate]").count() == 0
    assert "manage_cache" in page.locator("#content-main").inner_text()
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    refused = page.request.post(
        f"{live_server.url}/admin/django_cachestrat/cachedashboard/invalidate/",
        form={"model": "tests.Book", "csrfmiddlewaretoken": csrf},
        headers={"X-CSRFToken": csrf},
    )
    assert refused.status == 403
    assert "CSRF" not in refused.text()  # refused for the permission, not the token
