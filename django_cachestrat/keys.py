"""Pure key building: no I/O, no settings access.

Every key of one row shares a Redis Cluster hash tag (``{app.model:pk}``), so scripts
that touch the entry, its lease and its write marker run on one node. The model's version
key has a tag of its own. Values that could be unsafe in a key (spaces, braces, colons,
unicode, long strings) are hashed; a hashed part starts with ``#``, which no literal part
contains, so the two never collide.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from types import MappingProxyType

_SAFE = re.compile(r"[A-Za-z0-9_.@+-]{1,64}\Z")


def token(value: object) -> str:
    """Return ``value`` as a key part: itself when short and plain, else a hash of it."""
    if type(value) is int:  # the common pk: always plain, no regex needed
        return str(value)
    text = str(value)
    if _SAFE.match(text):
        return text
    return "#" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def entry(prefix: str, label: str, pk: object) -> str:
    """Key of a row's cached field values.

    One key per row, whatever the schema: processes of two schemas side by side (a
    rolling deploy) invalidate and store the same key. The schema's fingerprint is in
    the value (``codec``), so an entry of another schema is a miss.
    """
    return f"{prefix}:{{{label}:{token(pk)}}}:entry"


def entries(prefix: str, label: str, pks) -> list[str]:
    """Keys of several rows' entries (``entry`` of each; the hot path of a read)."""
    head, tail = f"{prefix}:{{{label}:", "}:entry"
    return [f"{head}{pk}{tail}" if type(pk) is int else head + token(pk) + tail for pk in pks]


def lease(prefix: str, label: str, pk: object) -> str:
    """Key of the lease a reader takes before it fills a missed row."""
    return f"{prefix}:{{{label}:{token(pk)}}}:lease"


def gone(prefix: str, label: str, pk: object) -> str:
    """Key of a row's tombstone: set for a moment by every invalidation of the row.

    A lookup filler, which reads the row by value and so cannot take its lease first,
    stores the row only if there is none (see ``scripts.LOOKUP_FILL``).
    """
    return f"{prefix}:{{{label}:{token(pk)}}}:gone"


def fill(prefix: str, label: str, pk: object) -> tuple[str, str, str]:
    """Return the keys a fill of a row uses.

    Its lease, the count of readers waiting for it, and the list the filler pushes one
    token to per waiter when it is done.
    """
    tag = f"{prefix}:{{{label}:{token(pk)}}}"
    return f"{tag}:lease", f"{tag}:waiters", f"{tag}:ready"


def lookup_fill(prefix: str, label: str, field: str, value: object) -> tuple[str, str, str]:
    """Return the keys a fill of a lookup value's pointer uses (as ``fill``)."""
    tag = f"{prefix}:{{{label}:{field}={token(value)}}}"
    return f"{tag}:lease", f"{tag}:waiters", f"{tag}:ready"


def writes(prefix: str, label: str, pk: object) -> tuple[str, str]:
    """Keys of the writes in flight for a row and of its write epoch (write-through)."""
    tag = f"{prefix}:{{{label}:{token(pk)}}}"
    return f"{tag}:inflight", f"{tag}:epoch"


def lookup(prefix: str, label: str, field: str, value: object) -> str:
    """Key of the pointer from a unique field's value to the row's pk."""
    return f"{prefix}:{{{label}:{field}={token(value)}}}:pk"


def version(prefix: str, label: str) -> str:
    """Key of a model's version; bumping it makes every cached row of the model a miss."""
    return f"{prefix}:{{{label}}}:version"


def behind_row(prefix: str, label: str, pk: object) -> dict[str, str]:
    """Keys of one write-behind row (one hash tag): its view, and its pending fields and deltas.

    The view is the row's entry key, holding a hash of encoded field values (so saves
    merge into it and counters increment in it on the server) and the fingerprint of
    the schema that wrote it; invalidation deletes it as it deletes any entry. ``seen``:
    per writer, the writes recorded lately, so a write sent again after a timeout counts
    once.
    """
    tag = f"{prefix}:{{{label}:{token(pk)}}}"
    return {
        "view": entry(prefix, label, pk),
        "fields": f"{tag}:wb:fields",
        "deltas": f"{tag}:wb:deltas",
        "lease": f"{tag}:lease",
        "seen": f"{tag}:wb:seen",
    }


def behind_increments(deltas: str, field: str) -> str:
    """Key of the list of signed increment records beside field ``field`` of hash ``deltas``.

    Any deltas hash of a row (pending, a batch's, set aside) has one per field it sums;
    the Lua scripts build the same name (``deltas:field``), in the row's hash tag.
    """
    return f"{deltas}:{field}"


def behind_batch_row(prefix: str, label: str, pk: object, batch: str) -> tuple[str, str]:
    """Keys of a row's fields and deltas while batch ``batch`` is flushing them."""
    tag = f"{prefix}:{{{label}:{token(pk)}}}"
    return f"{tag}:wb:{batch}:fields", f"{tag}:wb:{batch}:deltas"


@functools.cache
def behind_model(prefix: str, label: str) -> Mapping[str, str]:
    """Keys of a model's write-behind queue (one hash tag); built once per model.

    ``dirty``: rows with unflushed writes, scored by when they may next be claimed;
    ``busy``: rows in a batch being flushed, with the batch id; ``inflight``: batch ids,
    scored by the deadline after which another worker may reclaim them; ``attempts``:
    failed flushes per row; ``trigger``: set while a size-triggered flush is queued;
    ``cuts``: the pending writes set aside by direct writes not known to be committed
    (``pk|token|batch``), scored by when the flusher settles them if nobody did;
    ``first``: for rows whose dirty score no longer says when they were first written (in
    a batch, or put back with a retry delay), the ms of their oldest unflushed write.
    """
    tag = f"{prefix}:{{{label}}}:wb"
    names = ("dirty", "busy", "inflight", "attempts", "trigger", "cuts", "first")
    # Read-only: one mapping serves every read and write of the model.
    return MappingProxyType({name: f"{tag}:{name}" for name in names})


def behind_cut(prefix: str, label: str, pk: object, cut: str) -> tuple[str, str, str, str]:
    """Keys of the pending writes a direct write (its id: ``cut``) set aside for row ``pk``.

    The row's unclaimed fields and deltas, then those taken from its batch in flight.
    """
    tag = f"{prefix}:{{{label}:{token(pk)}}}:wb:cut:{cut}"
    return f"{tag}:fields", f"{tag}:deltas", f"{tag}:bfields", f"{tag}:bdeltas"


def behind_row_tag(prefix: str, label: str, pk: object) -> str:
    """Return the part every key of a write-behind row starts with (scripts build on it)."""
    return f"{prefix}:{{{label}:{token(pk)}}}"


def behind_batch(prefix: str, label: str, batch: str) -> str:
    """Key of the set of pks in batch ``batch``."""
    return f"{prefix}:{{{label}}}:wb:batch:{batch}"


#: The hash tag of the statistics keys (``stats``), and of the ring record (``ring_record``).
STATS_TAG = "stats"
RING_TAG = "ring"


def hash_tag(key: str) -> str:
    """Return a key's hash tag: what lies between its first ``{`` and the next ``}``.

    As Redis Cluster reads it; every key built here has one. A row's tag holds a ``:``
    (``app.model:pk``, or ``app.model:field=value`` for a lookup); a model's (its version,
    its write-behind queue) is the bare label; ``stats`` and ``ring`` are the others.
    """
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def ring_record(prefix: str) -> str:
    """Key of a node's ring record: which ring of nodes it serves (``backends.ring``)."""
    return f"{prefix}:{{{RING_TAG}}}:record"


def stats(prefix: str) -> Mapping[str, str]:
    """Keys of the statistics every process adds to (one hash tag, ``{stats}``).

    ``total``: a hash of counters since the last reset, fields ``<app.model>|<counter>``
    plus ``|since`` (when counting began, epoch seconds); ``census``: the last count of
    entries and bytes per model (JSON, short-lived); ``minute``: the prefix of the
    per-minute hashes (``stats_minute``).
    """
    tag = f"{prefix}:{{{STATS_TAG}}}"
    return MappingProxyType(
        {"total": f"{tag}:total", "census": f"{tag}:census", "minute": f"{tag}:m"}
    )


def stats_minute(prefix: str, minute: int) -> str:
    """Key of the hash of counters added during ``minute`` (epoch seconds // 60)."""
    return f"{prefix}:{{{STATS_TAG}}}:m:{minute}"
