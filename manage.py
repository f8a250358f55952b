#!/usr/bin/env python
"""Django's command-line utility for the demo project (testproject)."""

import os
import sys


def main():
    """Run an administrative task with the demo project's settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    try:
        from django.core.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError(
            "Couldn't import Django. Run scripts/bootstrap demo and use .venv/bin/python."
        ) from exc
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
