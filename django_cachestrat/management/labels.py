"""The model a management command is given: ``app_label.Model``, or a bare model name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from django.apps import apps
from django.core.management.base import CommandError
from django.db import models

#: Labels listed when a name is like none of them.
LISTED = 10


def model_named(name: str, among: Iterable[type[models.Model]], kind: str) -> type[models.Model]:
    """Return the model ``name`` names, else raise a ``CommandError`` that says what to type.

    ``name`` is ``app_label.Model`` (any installed model; the model name in any case), or
    a bare model name that exactly one model of ``among`` has (in any case). ``kind`` says
    what ``among`` holds ("cached", "write-behind"), for the messages, which suggest the
    closest labels of ``among``.
    """
    among = list(among)
    if name.count(".") == 1:
        try:
            return apps.get_model(name)
        except LookupError:
            raise CommandError(f"Unknown model {name!r}.{_hint(name, among, kind)}") from None
    same = [m for m in among if "." not in name and m._meta.model_name == name.lower()]
    if len(same) == 1:
        return same[0]
    if same:
        labels = ", ".join(m._meta.label for m in same)
        raise CommandError(
            f"{name!r} is the name of several {kind} models ({labels}): give app_label.Model."
        )
    raise CommandError(f"Expected app_label.Model, not {name!r}.{_hint(name, among, kind)}")


def _hint(name: str, among: list[type[models.Model]], kind: str) -> str:
    """Suggest the labels of ``among`` closest to ``name``, or list them."""
    by_label = {m._meta.label.lower(): m._meta.label for m in among}
    by_name: dict[str, list[str]] = {}
    for m in among:
        by_name.setdefault(m._meta.model_name or "", []).append(m._meta.label)
    typed = name.lower()
    close = [by_label[k] for k in difflib.get_close_matches(typed, by_label, n=3)]
    for k in difflib.get_close_matches(typed.rpartition(".")[2], by_name, n=3):
        close += by_name[k]
    close = list(dict.fromkeys(close))
    if close:
        return f" Did you mean {' or '.join(close)}?"
    if not among:
        return f" There are no {kind} models."
    labels = sorted(by_label.values())
    more = f" and {len(labels) - LISTED} more" if len(labels) > LISTED else ""
    return f" The {kind} models: {', '.join(labels[:LISTED])}{more}."
