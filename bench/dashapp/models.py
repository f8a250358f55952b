"""Fifty cached models, the three strategies in turn; the dashboard reads no table of theirs."""

from django.db import models

from django_cachestrat import CacheAsideMixin, CachedManager, WriteBehindMixin, WriteThroughMixin

MIXINS = (CacheAsideMixin, WriteThroughMixin, WriteBehindMixin)
COUNT = 50

for _i in range(COUNT):
    _name = f"Model{_i:02d}"
    globals()[_name] = type(
        _name,
        (MIXINS[_i % 3], models.Model),
        {
            "__module__": __name__,
            "n": models.IntegerField(default=0),
            "objects": CachedManager(),
            "Meta": type("Meta", (), {"base_manager_name": "objects"}),
        },
    )
