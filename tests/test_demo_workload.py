"""The demo's workload, run as the demo runs it: afterwards every demo model has hits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_after_the_demo_workload_the_dashboard_figures_show_every_model_hit(tmp_path):
    from tests import redis_server

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "CACHESTRAT_DEMO_DB": str(tmp_path / "demo.sqlite3"),
        "REDIS_URL": redis_server.url(),
    }
    manage = [sys.executable, str(ROOT / "manage.py")]

    def run(*args):
        done = subprocess.run(
            [*manage, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("migrate", "--noinput", "--verbosity", "0")
    sizes = ["--customers", "20", "--products", "30", "--orders", "40"]
    run("cachestrat_demo", *sizes, "--ops", "600", "--no-progress")
    figures = json.loads(run("cachestrat_stats", "--json"))["models"]
    demo = {label: f for label, f in figures.items() if label.startswith("shop.")}
    assert set(demo) == {"shop.Customer", "shop.Product", "shop.Order", "shop.ProductStats"}
    assert all(f["hits"] > 0 and f["hit_rate"] > 0 for f in demo.values()), demo
