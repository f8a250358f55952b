"""Fifty cached models (no tables needed), for the dashboard's benchmark."""
