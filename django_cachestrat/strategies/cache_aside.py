"""Cache-aside: reads fill the cache on a miss; writes drop the row after commit."""

from django_cachestrat.strategies.base import Strategy


class CacheAside(Strategy):
    """Writes go to the database; the row is dropped from the cache once they commit.

    The next read misses and fills. Pick it for rows read far more often than written,
    or written by code paths whose saved values you do not want to trust as the row.
    """

    name = "cache-aside"
