"""The state file a running demo leaves for other ``manage.py`` commands: its ``REDIS_URL``.

``scripts/demo`` starts its own Valkey on a random port. The launcher ``write``s the URL,
with its own pid and the demo's database, to ``testproject/.demo-state.json``
(git-ignored) and ``remove``s it on the way out; ``testproject/settings.py`` reads the URL
with ``redis_url()`` when ``REDIS_URL`` is not set, so ``manage.py cachestrat_write_behind``
run beside the demo reads the demo's server. A file left behind by a demo that was killed
names a pid that no longer runs, and is ignored.

Standard library only: the settings import it before Django is set up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PATH = Path(__file__).resolve().parent / ".demo-state.json"


def write(redis_url: str, database: str, path: Path | None = None) -> None:
    """Record this process (the launcher) as the running demo, with its cache and database.

    ``path``, here and below: the file, ``PATH`` unless given.
    """
    path = path or PATH
    state = {"pid": os.getpid(), "REDIS_URL": redis_url, "database": database}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, path)  # a reader never sees half a file


def redis_url(path: Path | None = None) -> str | None:
    """The ``REDIS_URL`` of the demo that runs now, or None (no file, or its demo is gone)."""
    path = path or PATH
    try:
        state = json.loads(path.read_text())
        pid = state["pid"]
        url = state["REDIS_URL"]
        if not isinstance(pid, int) or pid <= 0 or not isinstance(url, str):
            return None
        os.kill(pid, 0)  # raises if no such process runs
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url


def remove(path: Path | None = None) -> None:
    """Delete the file if this process wrote it (another demo may have replaced it since)."""
    path = path or PATH
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
