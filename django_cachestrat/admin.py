"""The admin: the cache dashboard, and write-behind dead letters to retry or discard.

The dashboard (``dashboard.overview`` rendered) needs ``view_cache_stats``; its actions
(invalidate a model, flush write-behind writes, reset statistics) are POSTs that need
``manage_cache``: being staff is not enough. Dead letters are written by the flusher,
never by hand, so they cannot be added or edited here; retrying needs the
``change_deadletter`` permission, discarding ``delete_deadletter``.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.defaultfilters import truncatechars
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from django_cachestrat import dashboard, invalidation, stats
from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.models import CacheDashboard, DeadLetter
from django_cachestrat.write_behind import flusher

VIEW = "django_cachestrat.view_cache_stats"
MANAGE = "django_cachestrat.manage_cache"


@admin.register(CacheDashboard)
class CacheDashboardAdmin(admin.ModelAdmin):
    """The dashboard page, in place of a change list, and its actions."""

    def has_view_permission(self, request, obj=None):
        """Whether the user may see the dashboard: ``view_cache_stats``."""
        return request.user.has_perm(VIEW)

    def has_add_permission(self, request):
        """Nothing to add: the dashboard has no rows."""
        return False

    def has_change_permission(self, request, obj=None):
        """Nothing to change."""
        return False

    def has_delete_permission(self, request, obj=None):
        """Nothing to delete."""
        return False

    def changelist_view(self, request, extra_context=None):
        """Render the dashboard for the period asked (``?period=1h`` or ``24h``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        overview = dashboard.overview(request.GET.get("period", "1h"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Cache dashboard",
            "opts": self.opts,
            "overview": overview,
            "periods": list(dashboard.PERIODS),
            "columns": dashboard.COLUMNS,
            "behind_columns": dashboard.BEHIND_COLUMNS,
            "charts": [
                ("Hit rate", overview.hit_rate_chart),
                ("Requests per minute", overview.requests_chart),
            ],
            "can_manage": request.user.has_perm(MANAGE),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/django_cachestrat/dashboard.html", context)

    def get_urls(self):
        """Return the dashboard's action URLs, then the model admin's own."""
        wrap = self.admin_site.admin_view
        return [
            path("invalidate/", wrap(self.invalidate_view), name="cachestrat_invalidate"),
            path("flush/", wrap(self.flush_view), name="cachestrat_flush"),
            path("reset/", wrap(self.reset_view), name="cachestrat_reset"),
            *super().get_urls(),
        ]

    def _done(self, request, text, level=messages.SUCCESS):
        self.message_user(request, text, level)
        return HttpResponseRedirect(reverse("admin:django_cachestrat_cachedashboard_changelist"))

    def _require_manage(self, request) -> None:
        if not request.user.has_perm(MANAGE):
            raise PermissionDenied

    @method_decorator(require_POST)
    def invalidate_view(self, request):
        """Drop every cached row of the model posted (``model=app_label.model``)."""
        self._require_manage(request)
        label = request.POST.get("model", "")
        try:
            model = stats.resolve(label)
        except ValueError as exc:
            return self._done(request, str(exc), messages.ERROR)
        invalidation.invalidate_model(model)
        return self._done(
            request, f"Invalidated {label}: every cached row of it is a miss from now on."
        )

    @method_decorator(require_POST)
    def flush_view(self, request):
        """Write the write-behind writes that are ready to the database now."""
        self._require_manage(request)
        try:
            report = flusher.flush()
        except CacheUnavailable as exc:
            return self._done(
                request, f"Nothing flushed: Redis cannot be reached ({exc}).", messages.ERROR
            )
        rows = sum(report.rows.values())
        return self._done(
            request,
            f"Flushed {rows} write-behind row(s) in {report.batches} batch(es); "
            f"{report.dead_letters} dead letter(s), {report.requeued} put back to retry.",
        )

    @method_decorator(require_POST)
    def reset_view(self, request):
        """Clear the statistics of every model (every process's, in Redis)."""
        self._require_manage(request)
        try:
            stats.reset()
        except CacheUnavailable as exc:
            return self._done(
                request, f"Statistics not reset: Redis cannot be reached ({exc}).", messages.ERROR
            )
        return self._done(request, "Reset the statistics of every cached model.")


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    """Dead letters, newest first, with the retry and discard actions."""

    list_display = ["id", "model", "object_pk", "short_error", "attempts", "created_at"]
    list_filter = ["model"]
    search_fields = ["object_pk", "error"]
    ordering = ["-created_at"]
    actions = ["retry", "discard"]
    fields = ("model", "object_pk", "values", "deltas", "error", "attempts", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request):
        """Dead letters come from the flusher only."""
        return False

    def has_change_permission(self, request, obj=None):
        """Shown, never edited (the change permission allows the retry action instead)."""
        return False

    def has_retry_permission(self, request) -> bool:
        """Whether the user may retry dead letters: ``change_deadletter``."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def get_actions(self, request):
        """Return the actions the user may run; "discard" stands for "delete selected"."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.display(description="error")
    def short_error(self, letter: DeadLetter) -> str:
        """Return the error, cut to fit a list row (the letter's page shows it all)."""
        return truncatechars(letter.error, 80)

    @admin.display(description="saved values")
    def values(self, letter: DeadLetter) -> str:
        """Return the field values the letter holds, by field."""
        fields = letter.saved_fields()
        return ", ".join(f"{name}={value!r}" for name, value in sorted(fields.items())) or "-"

    @admin.action(
        description="Retry: put the writes back in the write-behind queue",
        permissions=["retry"],
    )
    def retry(self, request, queryset):
        """Put each selected letter back in the queue; say how many went and which stayed."""
        done, kept = 0, []
        for letter in queryset:
            try:
                flusher.retry_dead_letter(letter)
                done += 1
            except (CacheUnavailable, RuntimeError, LookupError, ValueError) as exc:
                kept.append(f"{letter.pk} ({exc})")
        if done:
            self.message_user(
                request,
                f"Put {done} dead letter(s) back in the write-behind queue; the next flush "
                "writes them.",
                messages.SUCCESS,
            )
        if kept:
            self.message_user(
                request, f"Kept {len(kept)} dead letter(s): {'; '.join(kept)}", messages.ERROR
            )

    @admin.action(description="Discard: forget the writes", permissions=["delete"])
    def discard(self, request, queryset):
        """Delete the selected letters: their writes are never written."""
        count = queryset.count()
        queryset.delete()
        self.message_user(
            request,
            f"Discarded {count} dead letter(s): their writes will not be written.",
            messages.SUCCESS,
        )
