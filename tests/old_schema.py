"""A process of the old schema (``tests.models`` without ``added``), driven by a test.

Started by ``OldSchema`` with ``CACHESTRAT_TEST_SCHEMA=old`` on the same Redis and test
database, it reads one JSON command a line on stdin and answers one JSON line on stdout:
``{"ok": result}`` or ``{"error": "Type: message"}``. The commands are what a rolling
deploy's old processes do: read cached rows, save them, update, delete, increment and
flush write-behind writes.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import child_env


def _values(obj) -> dict:
    return {f.attname: _plain(getattr(obj, f.attname)) for f in obj._meta.concrete_fields}


def _plain(value):
    return value if value is None or isinstance(value, int | str) else str(value)


def _run(command: dict):
    from django_cachestrat.write_behind import flusher
    from tests import models

    op = command["op"]
    if op == "flush":
        report = flusher.flush()
        return {"rows": report.rows, "dead_letters": report.dead_letters}
    model = getattr(models, command["model"])
    manager = model.objects
    if op == "get":
        lookup = command.get("lookup", {"pk": command.get("pk")})
        try:
            return _values(manager.get_cached(**lookup))
        except model.DoesNotExist:
            return None
    if op == "save":
        obj = manager.get_cached(pk=command["pk"])
        for name, value in command["values"].items():
            setattr(obj, name, value)
        obj.save()
        return _values(obj)
    if op == "update":
        return manager.filter(pk=command["pk"]).update(**command["values"])
    if op == "delete":
        manager.get_cached(pk=command["pk"]).delete()
        return None
    if op == "increment":
        manager.increment_behind(command["pk"], **command["deltas"])
        return None
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    """Answer commands until stdin closes."""
    import django

    django.setup()
    for line in sys.stdin:
        try:
            answer = {"ok": _run(json.loads(line))}
        except Exception as exc:  # the test reads it: a crash of a command is a result
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


class OldSchema:
    """The old-schema process, seen from a test: ``process.get("Release", pk=1)``..."""

    def __init__(self):
        env = child_env()
        env["CACHESTRAT_TEST_SCHEMA"] = "old"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.old_schema"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, op: str, **command):
        """Run one command in the process; return its result, or raise what it raised."""
        self.process.stdin.write(json.dumps({"op": op, **command}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if "error" in answer:
            raise AssertionError(f"the old-schema process raised {answer['error']}")
        return answer["ok"]

    def close(self) -> None:
        """End the process (it ends when its stdin closes)."""
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
