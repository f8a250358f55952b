"""What the current database transaction has written, and whether reads may fill.

Inside an ``atomic`` block that wrote a cached model, reads of that model go to the
database (they must see the transaction's own writes) and never fill the cache (another
process must never see uncommitted data). The record is per thread and per database
alias; it ends with the transaction's commit, or with its rollback (or the rollback of the
savepoint that did the writing).
"""

from __future__ import annotations

import threading

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
        connection = connections[self.using]
        return connection.in_atomic_block and any(
            entry[1] is self for entry in connection.run_on_commit
        )


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
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    return getattr(connection, "isolation_level", None) == IsolationLevel.READ_COMMITTED
