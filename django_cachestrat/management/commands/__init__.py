"""``cachestrat_*`` management commands."""
