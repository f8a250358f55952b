"""Settings of the demo project.

SQLite file database at ``testproject/db.sqlite3``; the cache is the Redis (or Valkey)
server at ``REDIS_URL``. ``scripts/demo`` starts an embedded Valkey server and sets
``REDIS_URL`` when it is not set already; while it runs, it leaves that URL in
``testproject/.demo-state.json`` (``testproject/demo_state.py``), which these settings read
when ``REDIS_URL`` is not set, so that other ``manage.py`` commands reach the demo's server.
With neither, ``redis://127.0.0.1:6379/0``. Celery's broker
(for the write-behind flushes, see ``testproject/celery.py``) is the same server, on the
next database number.

For a local demo only: the secret key is public and DEBUG is on.
"""

import os
import urllib.parse
from pathlib import Path

from testproject import demo_state

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret-3f9c2a7e51b84d06")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_cachestrat",
    "testproject.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # CACHESTRAT_DEMO_DB: another file (the test of the demo's workload uses one).
        "NAME": os.environ.get("CACHESTRAT_DEMO_DB") or BASE_DIR / "db.sqlite3",
        "OPTIONS": {"timeout": 20},
    }
}

REDIS_URL = os.environ.get("REDIS_URL") or demo_state.redis_url() or "redis://127.0.0.1:6379/0"

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
    }
}

CACHESTRAT = {"CACHE_ALIAS": "default", "DEFAULT_TTL": 3600, "FLUSH_INTERVAL": 5.0}


def _broker_url(cache_url: str) -> str:
    """The cache's Redis URL on the next database number (the one before, for db 15)."""
    parts = urllib.parse.urlsplit(cache_url)
    db = int(parts.path.strip("/") or 0)
    return parts._replace(path=f"/{db + 1 if db < 15 else db - 1}").geturl()


# Celery (``celery -A testproject worker -B``): the worker runs the write-behind flushes
# that beat schedules, and those the size trigger queues. No result backend: the flush task
# ignores its result.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or _broker_url(REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "cachestrat-demo"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_cachestrat": {"handlers": ["console"], "level": "WARNING"}},
}
