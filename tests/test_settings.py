import pathlib
import re

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.test import override_settings
from django.test.utils import isolate_apps

from django_cachestrat import CacheAsideMixin, CachedManager, WriteBehindMixin, conf, options
from django_cachestrat.checks import check_models, check_settings
from django_cachestrat.serializers import Serializer
from tests.models import Bin, PageStats


def configured(**values):
    with override_settings(CACHESTRAT=values):
        return conf.settings()


def test_defaults_fill_in_missing_keys():
    cfg = configured(DEFAULT_TTL=5)
    assert cfg.DEFAULT_TTL == 5
    assert cfg.CACHE_ALIAS == "default"
    assert conf.KEYS["LEASE_TIMEOUT"].default == cfg.LEASE_TIMEOUT


def test_override_settings_is_seen_at_call_time():
    with override_settings(CACHESTRAT={"DEFAULT_TTL": 7}):
        assert conf.settings().DEFAULT_TTL == 7
    assert conf.settings().DEFAULT_TTL == 3600


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(ImproperlyConfigured, match=r"'DEFAULT_TLL'.*Did you mean 'DEFAULT_TTL'"):
        configured(DEFAULT_TLL=5)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DEFAULT_TTL", "60", r"'DEFAULT_TTL'\] must be int, not str"),
        ("DEFAULT_TTL", True, r"must be int, not bool"),
        ("DEFAULT_TTL", -1, r"must be >= 0"),
        ("ENABLED", 1, r"'ENABLED'\] must be bool"),
        ("LEASE_TIMEOUT", None, r"must be int or float, not NoneType"),
        ("TTL_JITTER", 0.5 + 0.5, r"TTL_JITTER.*\[0, 1\)"),
        ("SERIALIZER", "no.such.Thing", r"cannot be imported"),
        ("SERIALIZER", "django_cachestrat.conf.Settings", r"not a subclass"),
    ],
)
def test_wrong_values_name_the_key(key, value, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        configured(**{key: value})


def test_setting_must_be_a_dict():
    with override_settings(CACHESTRAT=[("DEFAULT_TTL", 1)]):
        with pytest.raises(ImproperlyConfigured, match="must be a dict"):
            conf.settings()


def test_serializer_by_dotted_path():
    cfg = configured(SERIALIZER="tests.serializers.ReversedPickle")
    assert type(cfg.serializer).__name__ == "ReversedPickle"
    assert isinstance(cfg.serializer, Serializer)


def test_base_serializer_is_abstract():
    with pytest.raises(NotImplementedError):
        Serializer().dumps(())
    with pytest.raises(NotImplementedError):
        Serializer().loads(b"")


def test_check_bad_setting_is_e001():
    with override_settings(CACHESTRAT={"NOPE": 1}):
        assert [e.id for e in check_settings()] == ["cachestrat.E001"]


def test_check_missing_alias_is_e002():
    with override_settings(CACHESTRAT={"CACHE_ALIAS": "other"}):
        assert [e.id for e in check_settings()] == ["cachestrat.E002"]


def test_check_non_redis_cache_is_e003():
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=caches):
        assert [e.id for e in check_settings()] == ["cachestrat.E003"]


def test_check_passes_on_the_test_settings():
    assert check_settings() == []
    # Bin keeps Django's base manager on purpose (see its docstring).
    assert [(e.obj, e.id) for e in check_models()] == [(Bin, "cachestrat.W001")]


def test_non_redis_cache_raises_at_use():
    from django_cachestrat import backends

    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=caches):
        with pytest.raises(ImproperlyConfigured, match="django_redis"):
            backends.get("default")
        with pytest.raises(ImproperlyConfigured, match="not in CACHES"):
            backends.get("missing")


@isolate_apps("tests")
def test_model_checks_e004_and_e005(monkeypatch):
    class NoManager(CacheAsideMixin, models.Model):
        name = models.CharField(max_length=5)

        class Meta:
            app_label = "tests"

    class BadMeta(CacheAsideMixin, models.Model):
        name = models.CharField(max_length=5)
        code = models.CharField(max_length=5, unique=True)
        objects = CachedManager()

        class CacheMeta:
            ttl = "10"
            lookups = ["name", "code", "missing", "id"]
            colour = "blue"

        class Meta:
            app_label = "tests"

    class BadLookups(CacheAsideMixin, models.Model):
        objects = CachedManager()
        other = models.Manager()  # noqa: DJ012 (a second manager, on purpose)

        class CacheMeta:
            lookups = "name"

        class Meta:
            app_label = "tests"

    class StaleBehind(WriteBehindMixin, models.Model):
        objects = CachedManager()

        class CacheMeta:
            stale_ttl = 30

        class Meta:
            app_label = "tests"

    monkeypatch.setattr(
        "django_cachestrat.options.cached_models",
        lambda: [NoManager, BadMeta, BadLookups, StaleBehind, PageStats],
    )
    errors = check_models()
    by_id = {}
    for error in errors:
        by_id.setdefault(error.id, []).append(error.msg)
    assert any("NoManager" in m and "not a CachedManager" in m for m in by_id["cachestrat.E004"])
    assert any("BadMeta" in m and "base manager" in m for m in by_id["cachestrat.W001"])
    # Named once, for the model that sets it.
    assert [m for m in by_id["cachestrat.W002"] if "StaleBehind" in m and "stale_ttl" in m]
    assert len(by_id["cachestrat.W002"]) == 1
    e005 = " ".join(by_id["cachestrat.E005"])
    assert "unknown attribute 'colour'" in e005
    assert "ttl must be a positive int" in e005
    assert "'name' is not unique" in e005
    assert "'missing' is not a field" in e005
    assert "'id' is the primary key" in e005
    assert "lookups must be a list" in e005
    assert "'code'" not in e005  # unique: fine
    assert all(
        isinstance(e, checks.Warning if e.id.startswith("cachestrat.W") else checks.Error)
        for e in errors
    )
    with pytest.raises(ImproperlyConfigured, match="colour"):
        options.get(BadMeta)


@isolate_apps("tests")
def test_unique_constraint_counts_as_unique():
    class Constrained(CacheAsideMixin, models.Model):
        code = models.CharField(max_length=5)
        objects = CachedManager()

        class CacheMeta:
            lookups = ["code"]

        class Meta:
            app_label = "tests"
            constraints = [models.UniqueConstraint(fields=["code"], name="uniq_code")]

    assert options.errors(Constrained) == []


def test_the_readmes_settings_table_gives_every_key_and_its_default():
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", table, re.M))

    def shown(value):
        return f'"{value}"' if isinstance(value, str) else repr(value)

    assert rows == {name: shown(spec.default) for name, spec in conf.KEYS.items()}
