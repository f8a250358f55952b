"""Events the core sends; statistics and your own code listen to them.

Each is sent with ``sender`` set to the model class (``None`` for a transport error).
The core checks ``signal.receivers`` before building any arguments, so an event nobody
listens to costs one attribute read.

- ``cache_hit(sender, keys=int)``: rows served from Redis by one call.
- ``cache_miss(sender, keys=int)``: rows one call did not find (or found unusable).
- ``cache_fill(sender, keys=int)``: rows a reader stored after a miss.
- ``cache_invalidate(sender, pks=list | None)``: rows dropped; ``pks=None`` means the
  whole model (a version bump).
- ``cache_error(sender, error=Exception, model=type | None)``: Redis failed, or bytes
  under one of our keys could not be read back (counted as a miss too).
- ``cache_wait(sender, keys=int)``: a reader waits for another reader's fill of these rows.
- ``cache_wait_timeout(sender, keys=int)``: it stopped waiting and read the database.
- ``cache_stale(sender, keys=int)``: rows served stale while another reader refreshes them.
- ``write_behind_flushed(sender, batch=str, pks=list, dead_letters=list)``: a write-behind
  batch of ``sender`` is in the database (``pks``), and these rows of it were
  dead-lettered (``dead_letters``).
- ``write_behind_batch_ready(sender)``: a write made ``BATCH_SIZE`` rows of ``sender``
  wait; ``django_cachestrat.write_behind.tasks`` queues a flush (sent to one writer per
  flush interval).
"""

from django.dispatch import Signal

cache_hit = Signal()
cache_miss = Signal()
cache_fill = Signal()
cache_invalidate = Signal()
cache_error = Signal()
write_behind_flushed = Signal()
cache_wait = Signal()
cache_wait_timeout = Signal()
cache_stale = Signal()
write_behind_batch_ready = Signal()
