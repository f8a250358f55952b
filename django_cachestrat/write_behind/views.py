"""A write-behind row's cached view: read it, lease it, wait for it, fill it, store it.

A view is a Redis hash of encoded field values (signed, but a counter's: see
``codec.view_value``), plus ``__f`` (the fingerprint of the schema that wrote it: another
schema's view, during a rolling deploy, is no view to this process), ``__v`` (the model
version it was filled under), ``__p`` (pinned: it has unflushed writes, so it has no TTL
and survives ``invalidate_model``) and ``__n`` ("no such row", for ``NEGATIVE_TTL``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django_cachestrat import codec
from django_cachestrat.backends import scripts
from django_cachestrat.backends.scripts import Acquired, Waited
from django_cachestrat.write_behind.state import ModelState, pairs


class Views(ModelState):
    """The cached views of one write-behind model."""

    def read(self, pks: Sequence[Any]) -> tuple[bytes | None, list[dict[str, bytes] | None]]:
        """Return the model version and each row's view (None where there is none)."""
        script_keys = [self.version_key(), *(self.row(pk)["view"] for pk in pks)]
        version, *views = self.transport.script(scripts.VIEW_READ, script_keys, [])
        return version or None, [pairs(v) if v else None for v in views]

    def acquire(self, pks: Sequence[Any], token: str, timeout: float) -> list[tuple]:
        """Take the leases of rows whose views are missing, in one round trip.

        Per pk: ``(FILLED, version, view)`` if a usable view arrived meanwhile, ``(TAKEN,
        version, None)`` if the lease is now ours, ``(HELD, version, None)`` if another
        reader holds it.
        """
        initial = int(self.transport.now() * 1_000_000)
        ms = max(1, int(timeout * 1000))
        version_key = self.version_key()
        fp = self.opts.fingerprint
        ops = [
            (
                scripts.VIEW_ACQUIRE,
                [row["view"], row["lease"], version_key],
                [token, ms, initial, fp],
            )
            for row in map(self.row, pks)
        ]
        return [
            (Acquired(r[0]), r[1], pairs(r[2]) if len(r) > 2 else None)
            for r in self.transport.execute(ops)
        ]

    def wait(self, slots: Sequence[tuple[str, tuple[str, str, str]]]) -> list[tuple]:
        """Check on fills others hold, per ``(view_key, (lease, waiters, ready))`` slot.

        ``(READY, (version, view))`` if the view is there, ``(TAKE_OVER, None)`` if nobody
        holds the lease, else ``(WAITING, None)``: the caller is now counted as waiting.
        The shape of ``RedisTransport.wait_many``, for the shared wait loop.
        """
        version_key = self.version_key()
        ops = [
            (scripts.VIEW_WAIT, [view, lease, waiters, version_key], [self.opts.fingerprint])
            for view, (lease, waiters, _) in slots
        ]
        return [
            (Waited(r[0]), (r[1], pairs(r[2])) if r[0] == Waited.READY else None)
            for r in self.transport.execute(ops)
        ]

    def fill(self, token: str, items: Sequence[tuple[Any, dict | None, int, bool]], version: bytes):
        """Store views read from the database where the lease ``token`` still holds.

        Items are ``(pk, values, ttl, pinned)``; ``values`` None stores "no such row".
        One round trip; waiters are woken. Return how many views were stored.
        """
        ops = []
        fp = self.opts.fingerprint
        counters = self.opts.counters
        for pk, values, ttl, pinned in items:
            lease, waiters, ready = self.fill_keys(pk)
            args: list[Any] = [token, 0 if pinned else ttl, "__f", fp]
            if values is None:
                args += ["__n", version]
            else:
                tag = self.row_tag(pk)
                for name, value in values.items():
                    args += [name, codec.view_value(tag, name, value, counters)]
                args += ["__v", version]
                if pinned:
                    args += ["__p", "1"]
            ops.append((scripts.VIEW_FILL, [lease, self.row(pk)["view"], waiters, ready], args))
        return sum(self.transport.execute(ops))

    def store(self, items: Sequence[tuple[Any, dict[str, bytes], int]]) -> int:
        """Store the views of new rows whose inserts committed, per ``(pk, encoded, ttl)``.

        ``encoded``: field values as ``codec.view_value`` made them. Not over a view
        that is as new (see ``scripts.VIEW_STORE``); each row's lease is deleted, as an
        invalidation deletes it. One round trip; return how many were stored.
        """
        initial = int(self.transport.now() * 1_000_000)
        version_key = self.version_key()
        ops = []
        for pk, encoded, ttl in items:
            row = self.row(pk)
            args: list[Any] = [ttl, initial, self.opts.fingerprint]
            for name, value in encoded.items():
                args += [name, value]
            script_keys = [row["view"], row["lease"], version_key, row["fields"], row["deltas"]]
            ops.append((scripts.VIEW_STORE, script_keys, args))
        return sum(self.transport.execute(ops))

    def release(self, pks: Sequence[Any], token: str) -> None:
        """Give back the fill leases ``token`` holds of rows ``pks``; wake their waiters."""
        for node, part in self.by_node(pks):
            node.release([self.fill_keys(pk) for pk in part], token)
