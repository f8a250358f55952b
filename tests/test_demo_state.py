"""The demo's state file (``testproject/demo_state.py``), which lets ``manage.py`` commands
run beside ``scripts/demo`` find the demo's own Valkey."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_state():
    # Loaded from its file: importing the testproject package would create its Celery app.
    spec = importlib.util.spec_from_file_location("demo_state", ROOT / "testproject/demo_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_running_demos_url_is_read_and_removed_at_exit(demo_state, tmp_path):
    path = tmp_path / ".demo-state.json"
    assert demo_state.redis_url(path) is None  # no demo
    demo_state.write("redis://127.0.0.1:6390/0", "/x/db.sqlite3", path)
    assert json.loads(path.read_text()) == {
        "pid": os.getpid(),
        "REDIS_URL": "redis://127.0.0.1:6390/0",
        "database": "/x/db.sqlite3",
    }
    assert demo_state.redis_url(path) == "redis://127.0.0.1:6390/0"
    demo_state.remove(path)
    assert not path.exists()


def test_a_killed_demos_file_is_ignored_and_not_removed_by_another(demo_state, tmp_path):
    path = tmp_path / ".demo-state.json"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    path.write_text(json.dumps({"pid": int(gone.stdout), "REDIS_URL": "redis://x:1/0"}))
    assert demo_state.redis_url(path) is None  # its process is gone
    demo_state.remove(path)
    assert path.exists()  # not this process's file
    for bad in ("{", "[]", '{"pid": 0, "REDIS_URL": "u"}', '{"pid": 1}'):
        path.write_text(bad)
        assert demo_state.redis_url(path) is None


def test_the_demo_settings_read_it_when_redis_url_is_not_set(demo_state, tmp_path):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from testproject import demo_state; demo_state.PATH = Path(sys.argv[2]); "
        "demo_state.write('redis://127.0.0.1:6391/0', 'db'); "
        "from testproject import settings; print(settings.REDIS_URL, settings.CELERY_BROKER_URL)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    path = str(tmp_path / "state.json")

    def urls():
        command = [sys.executable, "-c", code, str(ROOT), path]
        return subprocess.run(command, env=env, text=True, capture_output=True, check=True).stdout

    assert urls().split() == ["redis://127.0.0.1:6391/0", "redis://127.0.0.1:6391/1"]
    env["REDIS_URL"] = "redis://127.0.0.1:6392/0"  # set: it wins
    assert urls().split()[0] == "redis://127.0.0.1:6392/0"
