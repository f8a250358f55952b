"""Caching strategies: policy only (when to read, fill, store or drop).

Their I/O goes through the transport in ``backends``.
"""

from django_cachestrat.strategies.base import Strategy
from django_cachestrat.strategies.cache_aside import CacheAside
from django_cachestrat.strategies.write_behind import WriteBehind
from django_cachestrat.strategies.write_through import WriteThrough

__all__ = ["CacheAside", "Strategy", "WriteBehind", "WriteThrough"]
