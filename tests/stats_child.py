"""A process that reads cached rows and counts them, for the statistics tests.

``python -m tests.stats_child MODE LABEL PK N [INTERVAL]``: sets Django up on the test
settings (tests.conftest.child_env), reads row PK of model LABEL with ``get_cached`` N
times, then by MODE:

- ``exit``: returns; the counts are sent at exit (atexit), not by any explicit flush.
- ``hang``: prints ``counted`` and sleeps, to be killed; the background sender, every
  INTERVAL seconds, is all that sends.
- ``flush-then-hang``: flushes, reads N more times, prints ``counted`` and sleeps (with a
  long INTERVAL, the second N are never sent).
- ``fork``: forks; the child reads N more times and exits through ``os._exit`` after a
  flush; the parent waits for it, then exits (atexit sends its own N).
"""

import os
import sys
import time

import django


def main():
    mode, label, pk, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    interval = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.apps import apps
    from django.conf import settings
    from django.test import override_settings

    from django_cachestrat import stats

    override_settings(CACHESTRAT={**settings.CACHESTRAT, "STATS_INTERVAL": interval}).enable()
    model = apps.get_model(label)

    def read(times):
        for _ in range(times):
            model.objects.get_cached(pk=int(pk))

    read(n)
    if mode == "exit":
        return
    if mode == "fork":
        child = os.fork()
        if child == 0:
            read(n)
            stats.flush()
            os._exit(0)
        os.waitpid(child, 0)
        return
    if mode == "flush-then-hang":
        stats.flush()
        read(n)
    print("counted", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
