"""A transaction's writes, what it keeps for its commit, and whether reads may fill.

Inside an ``atomic`` block that wrote a cached model, reads of that model go to the
database (they must see the transaction's own writes) and never fill the cache (another
process must never see uncommitted data). The record is per thread and per database
alias; it ends with the transaction's commit, or with its rollback (or the rollback of the
savepoint that did the writing).

Work kept for the commit (write-behind writes) goes in an ``outbox``: one ``on_commit``
callback for many items, which still share the fate of the savepoint they were made in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connections, transaction

# Which models each database alias's open transaction wrote, for this thread (Django's
# connections are per thread too). A thread-local keeps the read path's check to one
# attribute read when nothing was written.
_state = threading.local()


class _Mark:
    """What one transaction wrote.

    It is its own ``on_commit`` callback, which forgets it at commit; a rollback discards
    the callback, which is how a later check tells the mark is void.
    """

    __slots__ = ("labels", "marks", "using")

    def __init__(self, marks: dict, using: str):
        self.marks = marks
        self.using = using
        self.labels: set[str] = set()

    def __call__(self) -> None:
        if self.marks.get(self.using) is self:
            del self.marks[self.using]

    def live(self) -> bool:
        return _registered(self.using, self)


def _registered(using: str, callback: Callable[[], None]) -> bool:
    """Tell whether ``callback`` still waits for the open transaction on ``using`` to commit.

    A rollback (of the transaction, or of the savepoint it was registered in) discards it.
    """
    connection = connections[using]
    # The newest callbacks are the likeliest: look from the end.
    return connection.in_atomic_block and any(
        entry[1] is callback for entry in reversed(connection.run_on_commit)
    )


class _Outbox:
    """Items to hand to ``send`` when the transaction commits, all of one savepoint.

    It is its own ``on_commit`` callback, registered when the first item comes: Django
    discards it with the savepoint it was registered in, and so every item in it.
    """

    __slots__ = ("boxes", "items", "savepoints", "send")

    def __init__(self, boxes: list, savepoints: tuple, send: Callable):
        self.boxes = boxes
        self.savepoints = savepoints
        self.send = send
        self.items: dict = {}

    def __call__(self) -> None:
        if self in self.boxes:
            self.boxes.remove(self)
        self.send(self.items)


def outbox(using: str, send: Callable[[dict], None]) -> dict:
    """Return a dict that ``send`` receives when the open transaction on ``using`` commits.

    Callers put items in it as they go and merge those that concern one thing. Items put
    while one savepoint is innermost share its fate: the whole dict is dropped when the
    savepoint (or the transaction) rolls back. A change of savepoint starts a new dict,
    sent after the earlier ones, so what is sent keeps the order it was put in. Call it
    only inside an ``atomic`` block.
    """
    connection = connections[using]
    boxes = _state.__dict__.setdefault("outboxes", {}).setdefault((using, send), [])
    savepoints = tuple(connection.savepoint_ids)
    box = boxes[-1] if boxes else None
    if box is None or box.savepoints != savepoints or not _registered(using, box):
        boxes[:] = [b for b in boxes if _registered(using, b)]  # forget rolled-back ones
        box = _Outbox(boxes, savepoints, send)
        boxes.append(box)
        # Robust: whatever ``send`` raises is logged, and the transaction's other commit
        # callbacks (invalidations among them) still run.
        transaction.on_commit(box, using=using, robust=True)
    return box.items


def keeping() -> bool:
    """Tell, cheaply, whether this thread has handed out any ``outbox`` not yet sent."""
    return any(_state.__dict__.get("outboxes", {}).values())


def kept(using: str, send: Callable[[dict], None]) -> list[dict]:
    """Return the dicts ``outbox`` gave out that the open transaction will still send.

    Oldest first; none outside a transaction, none rolled back.
    """
    boxes = _state.__dict__.get("outboxes", {}).get((using, send))
    if not boxes:
        return []
    live = [box for box in boxes if _registered(using, box)]
    if len(live) != len(boxes):
        boxes[:] = live
    return [box.items for box in live]


def mark_written(using: str, label: str) -> None:
    """Note that the open transaction on ``using`` wrote model ``label`` (no-op outside one)."""
    if not connections[using].in_atomic_block:
        return
    marks = _state.__dict__.setdefault("marks", {})
    mark = marks.get(using)
    if mark is None or not mark.live():
        mark = marks[using] = _Mark(marks, using)
        transaction.on_commit(mark, using=using)
    mark.labels.add(label)


def written(using: str, label: str) -> bool:
    """Tell whether the open transaction on ``using`` wrote model ``label``."""
    marks = _state.__dict__.get("marks")
    if not marks:
        return False
    mark = marks.get(using)
    if mark is None or label not in mark.labels:
        return False
    if mark.live():
        return True
    # Rolled back (or its savepoint was): what it wrote is not in the database.
    del marks[using]
    return False


def may_fill(using: str) -> bool:
    """Tell whether a row read now on ``using`` is committed data that is still current.

    Outside a transaction, always. Inside one, only at READ COMMITTED on PostgreSQL:
    under snapshot isolation (SQLite, MySQL's REPEATABLE READ, PostgreSQL's higher
    levels) a read can return a row that another transaction has since replaced.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        return True
    if connection.vendor != "postgresql":
        return False
    from django.db.backends.postgresql.psycopg_any import (  # type: ignore[import-untyped]
        IsolationLevel,  # (not in the stubs)
    )

    return getattr(connection, "isolation_level", None) == IsolationLevel.READ_COMMITTED
