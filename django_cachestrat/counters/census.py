"""How many entries each model has in Redis, and their bytes: counted by a scan.

Entries expire on their own, so a count kept at fill time drifts; the keyspace is the
truth. A census walks it with ``SCAN`` (matching the app's entry keys), asks ``MEMORY
USAGE`` of each entry found, one round trip per page, and keeps the result for
``MAX_AGE`` seconds under ``keys.stats(prefix)["census"]``, so that many dashboards and
scrapers cost one census. A keyspace larger than ``BUDGET`` pages is not walked to the
end: the counts are scaled up by the part not seen and marked inexact.
"""

from __future__ import annotations

import json
import time

from django_cachestrat import keys

#: Seconds a census is reused.
MAX_AGE = 30
#: ``SCAN`` pages a census reads at most, and the keys a page asks for.
BUDGET = 200
PAGE = 1000


def read(transport, prefix: str, *, fresh: bool = False) -> dict:
    """Return ``{"at", "exact", "models": {label: [entries, bytes]}}``: the last census.

    A new census is taken when there is none younger than ``MAX_AGE`` or ``fresh``.
    """
    key = keys.stats(prefix)["census"]
    if not fresh:
        (raw,) = transport.execute([("GET", key)])
        if raw is not None:
            return json.loads(raw)
    result = take(transport, prefix)
    transport.execute([("SET", key, json.dumps(result), "EX", MAX_AGE)])
    return result


def take(transport, prefix: str) -> dict:
    """Walk the keyspace now (of every node, on a ring); see ``read`` for what is returned."""
    found: dict[str, list[int]] = {}
    exact = True
    for node in transport.nodes:
        counted, whole = _count(node, prefix)
        exact = exact and whole
        for label, (n, size) in counted.items():
            figures = found.setdefault(label, [0, 0])
            figures[0] += n
            figures[1] += size
    return {"at": time.time(), "exact": exact, "models": found}


def _count(node, prefix: str) -> tuple[dict[str, list[int]], bool]:
    """Count one server's entries and bytes per model; also whether it was walked whole."""
    pattern = f"{prefix}:{{*}}:entry"
    head = len(prefix) + 2  # "<prefix>:{"
    found: dict[str, list[int]] = {}
    cursor, pages = 0, 0
    while True:
        ((cursor, names),) = node.execute([("SCAN", cursor, "MATCH", pattern, "COUNT", PAGE)])
        pages += 1
        cursor = int(cursor)
        if names:
            sizes = node.execute([("MEMORY", "USAGE", name) for name in names])
            for name, size in zip(names, sizes, strict=True):
                if size is None:
                    continue  # expired since the scan saw it
                label = name.decode()[head:].split(":", 1)[0]
                figures = found.setdefault(label, [0, 0])
                figures[0] += 1
                figures[1] += size
        if cursor == 0 or pages >= BUDGET:
            break
    exact = cursor == 0
    if not exact:
        (size,) = node.execute([("DBSIZE",)])
        scale = max(1.0, size / (pages * PAGE))
        found = {label: [round(n * scale), round(b * scale)] for label, (n, b) in found.items()}
    return found, exact
