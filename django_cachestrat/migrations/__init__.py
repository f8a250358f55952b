"""Migrations of django_cachestrat."""
