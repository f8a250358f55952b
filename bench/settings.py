"""Settings of the benchmark: PostgreSQL from PG* variables, Redis from ``REDIS_URL``.

``bench.run`` sets ``REDIS_URL`` to a server it starts itself when none is given. The
flush-workers benchmark (``bench.flush_workers``) may run on a SQLite file instead
(``CACHESTRAT_BENCH_SQLITE``, its path) and with another ``BATCH_SIZE``
(``CACHESTRAT_BENCH_BATCH_SIZE``); its worker processes inherit both.
"""

import os

SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["django_cachestrat", "bench"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "cachestrat_bench"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        # One persistent connection for the whole run, as a long-lived worker has.
        "CONN_MAX_AGE": None,
    }
}

if os.environ.get("CACHESTRAT_BENCH_SQLITE"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["CACHESTRAT_BENCH_SQLITE"],
            # Writers queue for SQLite's one write lock: wait, as a deployment would.
            "OPTIONS": {"timeout": 60},
        }
    }

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1.0, "SOCKET_TIMEOUT": 1.0},
    }
}

CACHESTRAT = {"CACHE_ALIAS": "default", "DEFAULT_TTL": 3600, "KEY_PREFIX": "cachestrat-bench"}
if os.environ.get("CACHESTRAT_BENCH_BATCH_SIZE"):
    CACHESTRAT["BATCH_SIZE"] = int(os.environ["CACHESTRAT_BENCH_BATCH_SIZE"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_cachestrat": {"handlers": ["console"], "level": "WARNING"}},
}
