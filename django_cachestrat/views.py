"""Views of the statistics for monitoring: JSON, and Prometheus' text format.

Both need the ``django_cachestrat.view_cache_stats`` permission (anonymous users are sent
to the login page, users without it get 403), or, when ``CACHESTRAT["STATS_TOKEN"]`` is
set, an ``Authorization: Bearer <token>`` header (for scrapers). Include them with
``path("cachestrat/", include("django_cachestrat.urls"))``.
"""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.http import require_GET

from django_cachestrat import conf, prometheus, stats
from django_cachestrat.backends import CacheUnavailable

#: The permission both views require (``DeadLetter.Meta.permissions``).
PERMISSION = "django_cachestrat.view_cache_stats"


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """Return the response that refuses ``request``, or None if it may read the statistics."""
    token = conf.settings().STATS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and constant_time_compare(header, f"Bearer {token}"):
        return None
    if header.startswith("Bearer "):
        raise PermissionDenied("Wrong statistics token.")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not user.has_perm(PERMISSION):
        raise PermissionDenied(f"Reading cache statistics needs the {PERMISSION} permission.")
    return None


@require_GET
def stats_json(request: HttpRequest) -> HttpResponse:
    """Return ``stats.report()`` as JSON; with ``?model=app_label.Model``, its series too.

    ``&minutes=N`` (default 60) sizes the series. 400 for a bad model or number, 503 when
    Redis cannot be read.
    """
    refused = _refusal(request)
    if refused is not None:
        return refused
    try:
        body = stats.report()
        if "model" in request.GET:
            minutes = request.GET.get("minutes", "60")
            if not minutes.isdigit():
                raise ValueError(f"minutes must be a whole number, not {minutes!r}.")
            body["series"] = stats.series(request.GET["model"], int(minutes))
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except CacheUnavailable as exc:
        return JsonResponse({"error": f"Redis is unavailable: {exc}"}, status=503)
    return JsonResponse(body)


@require_GET
def stats_prometheus(request: HttpRequest) -> HttpResponse:
    """Return the statistics in Prometheus' text format (501 without ``prometheus_client``)."""
    refused = _refusal(request)
    if refused is not None:
        return refused
    if not prometheus.available():
        return HttpResponse(
            "prometheus_client is not installed: pip install 'django-cachestrat[prometheus]'\n",
            status=501,
            content_type="text/plain",
        )
    try:
        figures = stats.report()["models"]
    except CacheUnavailable as exc:
        return HttpResponse(f"Redis is unavailable: {exc}\n", status=503, content_type="text/plain")
    return HttpResponse(prometheus.exposition(figures), content_type=prometheus.CONTENT_TYPE_LATEST)
