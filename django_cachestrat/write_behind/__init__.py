"""Write-behind: pending writes in Redis, the flush queue, the flusher and its tasks.

- ``state``: the Redis keys of one model's write-behind rows.
- ``pending``: recording writes (saves, increments, superseding) and reading them back.
- ``views``: a row's cached view (a hash of field values): read, lease, wait, fill.
- ``queue``: claim, acknowledge and requeue batches of pending rows.
- ``applied``: the ``AppliedBatch`` markers that make a batch apply exactly once.
- ``flusher``: write claimed batches to the database; dead letters.
- ``tasks``: the Celery task and beat schedule; a flush queued when a batch is ready.
- ``inspect``: what is pending and dead-lettered, for the management command.

The strategy (``strategies.write_behind``) decides when to record and read; it never
imports Celery: it sends ``signals.write_behind_batch_ready`` and ``tasks`` listens.
"""
