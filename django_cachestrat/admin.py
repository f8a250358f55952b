"""The admin for the app's own tables: write-behind dead letters, to look at, retry or discard.

Dead letters are written by the flusher, never by hand, so they cannot be added or edited
here. Retrying needs the ``change_deadletter`` permission, discarding ``delete_deadletter``
(Django's own model permissions, given in the admin's user and group pages).
"""

from __future__ import annotations

import pickle

from django.contrib import admin, messages
from django.template.defaultfilters import truncatechars

from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.models import DeadLetter
from django_cachestrat.write_behind import flusher


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    """Dead letters, newest first, with the retry and discard actions."""

    list_display = ["id", "model", "object_pk", "short_error", "attempts", "created_at"]
    list_filter = ["model"]
    search_fields = ["object_pk", "error"]
    ordering = ["-created_at"]
    actions = ["retry", "discard"]
    fields = ["model", "object_pk", "values", "deltas", "error", "attempts", "created_at"]
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
        # Our own table's bytes, written by the flusher with pickle.
        fields = pickle.loads(bytes(letter.fields))
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
