"""The Redis keys of one model's write-behind rows, and how a pk is written in them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import models

from django_cachestrat import backends, conf, keys, options


def member(pk: Any) -> str:
    """Return how a pk is written in the model's queue (``opts.to_pk`` reads it back).

    Whatever its type (an int, a UUID): redis-py takes only str, bytes and numbers.
    """
    return str(pk)


def pairs(flat: Sequence[bytes]) -> dict[str, bytes]:
    """Return a flat ``HGETALL`` reply from a script as a dict."""
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


class ModelState:
    """Where one model's write-behind state lives in Redis, and the transport to it.

    ``transport``: the cache's (default), or one node of a ring. A row's state is on the
    row's node; the model's queue is on every node, each copy holding the rows that node
    holds: a method about rows sends each node its rows (``by_node``), one about the
    whole model asks every node (``transport.nodes``).
    """

    def __init__(self, model: type[models.Model], transport: backends.Transport | None = None):
        self.model = model
        self.opts = options.get(model)
        self.cfg = conf.settings()
        self.transport = transport or backends.get(self.cfg.CACHE_ALIAS)
        self.prefix = self.cfg.KEY_PREFIX
        self.queue = keys.behind_model(self.prefix, self.opts.label)

    def node(self, pk: Any) -> backends.RedisTransport:
        """Return the node holding row ``pk``'s keys (the transport itself, on one server)."""
        return self.transport.node(keys.entry(self.prefix, self.opts.label, pk))

    def by_node(self, pks: Sequence[Any]) -> list[tuple[backends.RedisTransport, list[Any]]]:
        """Group ``pks`` by the node holding each row, in first-seen order (none: no group)."""
        nodes = self.transport.nodes
        if len(nodes) == 1:  # one server: no key to build
            return [(nodes[0], list(pks))] if pks else []
        groups = self.transport.split(keys.entries(self.prefix, self.opts.label, pks))
        return [(node, [pks[i] for i in where]) for node, where in groups]

    def row(self, pk: Any) -> dict[str, str]:
        """Return the keys of row ``pk``: view, fields, deltas, lease."""
        return keys.behind_row(self.prefix, self.opts.label, pk)

    def row_tag(self, pk: Any) -> bytes:
        """Return the tag of row ``pk``'s keys, which the MACs of its values bind."""
        return keys.behind_row_tag(self.prefix, self.opts.label, pk).encode()

    def batch_row(self, pk: Any, batch_id: str) -> tuple[str, str]:
        """Return the keys of row ``pk``'s fields and deltas in batch ``batch_id``."""
        return keys.behind_batch_row(self.prefix, self.opts.label, pk, batch_id)

    def version_key(self) -> str:
        """Return the model's version key."""
        return keys.version(self.prefix, self.opts.label)

    def fill_keys(self, pk: Any) -> tuple[str, str, str]:
        """Return the keys of a fill of row ``pk``: its lease, waiter count and ready list."""
        return keys.fill(self.prefix, self.opts.label, pk)
