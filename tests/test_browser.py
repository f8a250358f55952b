"""Browser tests in headless Chromium (``browser_page``) against Django's live server."""

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
