"""Settings of the test app. ``CACHESTRAT_TEST_DB=postgres`` runs the suite on PostgreSQL."""

import json
import os
import tempfile
import urllib.parse
import uuid

from tests import redis_server

SECRET_KEY = "tests-only"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the admin's styles in browser tests (live_server)
    "django_cachestrat",
    "tests",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
STATIC_URL = "static/"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

if os.environ.get("CACHESTRAT_TEST_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("PGDATABASE", "cachestrat"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            # This run's own test database: runs side by side never drop each other's.
            "TEST": {
                "NAME": "test_cachestrat_"
                + os.environ.setdefault("CACHESTRAT_TEST_RUN", uuid.uuid4().hex[:8])
            },
        }
    }
    # A second database, for tests of writes and reads on another alias: the same server,
    # this run's own test database too.
    DATABASES["other"] = {
        **DATABASES["default"],
        "NAME": os.environ.get("PGDATABASE_OTHER", "cachestrat_other"),
        "TEST": {"NAME": DATABASES["default"]["TEST"]["NAME"] + "_other"},
    }
else:
    # A file, not memory: tests with threads and worker processes share the database.
    _db_file = os.environ.get("CACHESTRAT_TEST_DB_NAME") or os.path.join(
        tempfile.gettempdir(), f"cachestrat-tests-{os.getpid()}.sqlite3"
    )
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _db_file,
            "TEST": {"NAME": _db_file},
            "OPTIONS": {"timeout": 20},
        },
    }
    # A second database, for tests of writes and reads on another alias; named after the
    # first, so a process a test starts (given the first's name) finds it too.
    _other_file = _db_file + "-other"
    DATABASES["other"] = {
        **DATABASES["default"],
        "NAME": _other_file,
        "TEST": {"NAME": _other_file},
    }

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": redis_server.url(),
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }
}

CACHESTRAT = {
    "CACHE_ALIAS": "default",
    "DEFAULT_TTL": 3600,
    "KEY_PREFIX": "cstest",
    # Short, so tests of killed workers see their batches reclaimed quickly.
    "VISIBILITY_TIMEOUT": 2.0,
    # Values a test gives the worker processes it starts (tests/worker.py, ``cachestrat=``).
    **json.loads(os.environ.get("CACHESTRAT_TEST_OVERRIDES", "{}")),
}

# CACHESTRAT_TEST_RING=N runs the suite on a ring of N nodes: the suite's Redis ("default")
# and N - 1 more servers ("node1", ...); conftest.py settles the ring before each test.
RING = int(os.environ.get("CACHESTRAT_TEST_RING", "0") or 0)
if RING >= 2:
    for _n, _url in enumerate(redis_server.ring_urls(RING - 1), start=1):
        CACHES[f"node{_n}"] = {**CACHES["default"], "LOCATION": _url}
    CACHESTRAT["NODES"] = list(CACHES)

# CACHESTRAT_TEST_CLUSTER=1 runs the suite on a Redis Cluster of 3 masters with a replica each
# (tests/redis_cluster.py), started once (worker processes inherit REDIS_CLUSTER_URL). The
# suite's own server stays the Celery broker: a cluster has no database numbers.
CLUSTER = os.environ.get("CACHESTRAT_TEST_CLUSTER", "") not in ("", "0")
if CLUSTER:
    from tests import redis_cluster

    CACHES["default"] = {
        **CACHES["default"],
        "LOCATION": redis_cluster.url(),
        "OPTIONS": {
            **CACHES["default"]["OPTIONS"],
            "CONNECTION_FACTORY": "django_cachestrat.backends.cluster.ClusterConnectionFactory",
        },
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"django_cachestrat": {"handlers": ["null"], "propagate": True}},
}


def _broker_url(cache_url):
    """The cache's Redis URL on a neighbouring database number."""
    parts = urllib.parse.urlsplit(cache_url)
    db = int(parts.path.strip("/") or 0)
    return parts._replace(path=f"/{db + 1 if db < 15 else db - 1}").geturl()


# Celery, for tests that run a real worker (tests/worker.py). The broker is the suite's Redis
# on another database than the cache, so key cleanup never touches Celery's keys. The queue
# is this run's own (worker processes inherit the variable), so runs sharing a REDIS_URL never
# take each other's tasks. A message a killed worker held is delivered again about 3-4 s after
# it was first delivered. The flip side: a countdown/ETA longer than 3 s is delivered again,
# and a task running longer than 3 s may also be delivered to a second polling worker.
CELERY_BROKER_URL = _broker_url(redis_server.url())
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
CELERY_TASK_DEFAULT_QUEUE = "cstest-" + os.environ.setdefault(
    "CACHESTRAT_TEST_RUN", uuid.uuid4().hex[:8]
)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
