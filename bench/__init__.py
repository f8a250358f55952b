"""Benchmark of django_cachestrat against the Redis floor and the ORM on PostgreSQL.

Run it with ``scripts/bench`` (or ``.venv/bin/python -m bench.run --help``).
"""
