"""What the current database transaction has written, and whether reads may fill.

Inside an ``atomic`` block that wrote a cached model, reads of that model go to the
database (they must see the transaction's own writes) and never fill the cache (another
process must never see uncommitted data). The record lives on the connection object, so
it is per thread and per database alias, and it is dropped as soon as the connection is
seen outside an atomic block (after commit or rollback).
"""

from __future__ import annotations

from django.db import connections

_DIRTY = "_cachestrat_dirty"


def mark_written(using: str, label: str) -> None:
    """Note that the open transaction on ``using`` wrote model ``label`` (no-op outside one)."""
    connection = connections[using]
    if connection.in_atomic_block:
        dirty = connection.__dict__.get(_DIRTY)
        if dirty is None:
            dirty = connection.__dict__[_DIRTY] = set()
        dirty.add(label)


def written(using: str, label: str) -> bool:
    """Tell whether the open transaction on ``using`` wrote model ``label``."""
    connection = connections[using]
    dirty = connection.__dict__.get(_DIRTY)
    if not dirty:
        return False
    if not connection.in_atomic_block:
        dirty.clear()
        return False
    return label in dirty


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
