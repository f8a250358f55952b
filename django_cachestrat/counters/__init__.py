"""Statistics below the public API: counted in each process, added up in Redis.

``recorder`` counts the core's events in process and sends them in the background;
``store`` is their Redis layout (totals, per-minute buckets); ``census`` counts the
entries and bytes a model has in Redis. ``django_cachestrat.stats`` reads them.
"""
