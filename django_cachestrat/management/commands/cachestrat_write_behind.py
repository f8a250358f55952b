"""``manage.py cachestrat_write_behind [list | retry ID... | discard ID...]``."""

import datetime as dt
import json

from django.core.management.base import BaseCommand, CommandError

from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.management.labels import model_named
from django_cachestrat.models import DeadLetter
from django_cachestrat.write_behind import flusher, inspect

#: Characters of a field value shown: a row's line stays readable, however long its values.
TEXT_WIDTH = 40
#: The same in ``--json``, where a value is for a script to read, but a text field of a
#: megabyte is still not.
JSON_WIDTH = 200
#: Characters of a dead letter's error shown in the text listing.
ERROR_WIDTH = 120


class Command(BaseCommand):
    """List pending write-behind rows and dead letters; retry or discard dead letters."""

    help = (
        "List pending write-behind rows and dead letters, newest first (the default "
        "action); retry or discard dead letters."
    )

    def add_arguments(self, parser):
        """Take the action, the dead letter ids and the listing's options."""
        parser.add_argument(
            "action", nargs="?", default="list", choices=["list", "retry", "discard"]
        )
        parser.add_argument("ids", nargs="*", type=int, help="dead letter ids")
        parser.add_argument("--all", action="store_true", help="every dead letter")
        parser.add_argument(
            "--model",
            action="append",
            metavar="APP_LABEL.MODEL",
            help="list: only this write-behind model (repeatable; its bare name if unique)",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=inspect.DEFAULT_LIMIT,
            help=f"list: at most this many rows and dead letters (default {inspect.DEFAULT_LIMIT})",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help=f"list: print one JSON document (field values cut to {JSON_WIDTH} characters)",
        )

    def handle(self, *args, action, ids, all=False, **options):
        """Do the action."""
        if action == "list":
            return self._list(options["model"], options["limit"], options["json"])
        if not ids and not all:
            raise CommandError(f"{action} needs dead letter ids, or --all.")
        letters = DeadLetter.objects.all() if all else DeadLetter.objects.filter(pk__in=ids)
        found = list(letters)
        missing = set(ids) - {letter.pk for letter in found}
        if missing:
            raise CommandError(f"No dead letter with id {', '.join(map(str, sorted(missing)))}.")
        for letter in found:
            if action == "discard":
                letter.delete()
            else:
                try:
                    flusher.retry_dead_letter(letter)
                except (CacheUnavailable, RuntimeError) as exc:
                    raise CommandError(f"Dead letter {letter.pk} kept: {exc}") from exc
            self.stdout.write(f"{action}: dead letter {letter.pk} ({letter})")

    def _list(self, labels, limit, as_json):
        if limit < 0:
            raise CommandError("--limit must be 0 or more.")
        chosen = _models(labels) if labels else None
        try:
            found = inspect.inspect(chosen, limit=limit)
        except CacheUnavailable as exc:
            raise CommandError(f"Redis cannot be reached; nothing listed ({exc}).") from exc
        now = dt.datetime.now(dt.UTC)
        if as_json:
            self.stdout.write(json.dumps(_document(found, now), indent=2))
        else:
            self.stdout.write("\n".join(_text(found, now)))


def _models(labels):
    """Return the write-behind models ``labels`` name (``model_named``); else CommandError."""
    behind = flusher.write_behind_models()
    chosen = []
    for label in labels:
        model = model_named(label, behind, "write-behind")._meta.concrete_model
        if model not in behind:
            raise CommandError(f"{model._meta.label} is not a write-behind model.")
        chosen.append(model)
    return list(dict.fromkeys(chosen))


def _document(found, now) -> dict:
    return {
        "pending": {
            "total": found.rows_total,
            "models": [
                {"model": s.model, "rows": s.rows, "batches_in_flight": s.batches}
                for s in found.summaries
            ],
            "rows": [inspect.as_dict(r, width=JSON_WIDTH, now=now) for r in found.rows],
        },
        "dead_letters": {
            "total": found.letters_total,
            "rows": [inspect.as_dict(letter, width=JSON_WIDTH) for letter in found.letters],
        },
    }


def _text(found, now) -> list[str]:
    lines = []
    if not found.summaries:
        lines.append("No pending write-behind writes.")
    for s in found.summaries:
        lines.append(f"{s.model}: {s.rows} row(s) waiting, {s.batches} batch(es) in flight")
    if found.rows:
        lines += ["", f"Pending rows, newest first ({found.rows_total}):"]
        lines += [f"  {_row(row, now)}" for row in found.rows]
        lines += _more(found.rows_total - len(found.rows))
    heading = f"{found.letters_total} dead letter(s)"
    lines += ["", heading + (", newest first:" if found.letters else "")]
    for letter in found.letters:
        when = letter.created_at.replace(microsecond=0)
        lines.append(
            f"  #{letter.id} {letter.model} pk={letter.pk}  at {when.isoformat()} "
            f"({_duration(now - letter.created_at)} ago)  after {letter.attempts} attempt(s): "
            f"{inspect.shorten(letter.error, ERROR_WIDTH)}"
        )
    lines += _more(found.letters_total - len(found.letters))
    return lines


def _row(row, now) -> str:
    parts = [f"{row.model} pk={row.pk}", f"age {_duration(now - row.since)}"]
    if row.fields:
        parts.append("set " + ", ".join(f"{n}={_value(v)}" for n, v in row.fields.items()))
    if row.deltas:
        parts.append("add " + ", ".join(f"{n}{a:+d}" for n, a in row.deltas.items()))
    if row.retries:
        parts.append(f"retries {row.retries}")
    if row.next_retry:
        parts.append(f"next retry in {_duration(row.next_retry - now)}")
    if row.batch:
        parts.append(f"in batch {row.batch}")
    return "  ".join(parts)


def _more(hidden: int) -> list[str]:
    return [f"  ... and {hidden} more (--limit)"] if hidden > 0 else []


def _value(value) -> str:
    # Strings quoted (cut inside the quotes), so a value of spaces or commas reads as one;
    # the rest as in --json.
    if isinstance(value, str):
        return repr(inspect.shorten(value, TEXT_WIDTH - 2))
    return inspect.shorten(str(inspect.jsonable(value)), TEXT_WIDTH)


def _duration(delta: dt.timedelta) -> str:
    """``45s``, ``3m05s``, ``2h07m``, ``3d04h``: two units at most."""
    seconds = max(0, int(delta.total_seconds()))
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    if days:
        return f"{days}d{h:02d}h"
    if hours:
        return f"{hours}h{m:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"
