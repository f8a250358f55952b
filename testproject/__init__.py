"""The demo project of django_cachestrat: settings, URLs and the ``shop`` app."""
