"""``manage.py cachestrat_demo`` lives here."""
