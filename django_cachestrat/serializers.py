"""Field values <-> bytes.

An entry never holds a pickled model instance (that breaks across deploys): it holds the
tuple of the row's concrete field values, and the read path rebuilds the instance with
``Model.from_db``. A serializer only turns that tuple into bytes and back. Choose one
with ``CACHESTRAT["SERIALIZER"]`` (a dotted path to a ``Serializer`` subclass).
"""

from __future__ import annotations

import pickle


class Serializer:
    """Base class of the pluggable serializers: ``dumps`` a tuple of values, ``loads`` it back.

    ``loads`` may raise any exception on bytes it did not write; the caller treats that
    as a miss (counted and logged), never as an error for the user.
    """

    def dumps(self, values: tuple) -> bytes:
        """Return the bytes that stand for ``values``."""
        raise NotImplementedError

    def loads(self, data: bytes) -> tuple:
        """Return the tuple ``dumps`` was given."""
        raise NotImplementedError


class PickleSerializer(Serializer):
    """Pickles the tuple of plain field values (ints, strings, datetimes, Decimals, UUIDs).

    Only values Django's fields produce are pickled, never model instances, so a class
    renamed or moved in a deploy does not break old entries. As with any pickle, keep the
    Redis server private to your application.
    """

    protocol = pickle.HIGHEST_PROTOCOL

    def dumps(self, values: tuple) -> bytes:
        """Pickle ``values``."""
        return pickle.dumps(values, self.protocol)

    def loads(self, data: bytes) -> tuple:
        """Unpickle ``data``; the result must be a tuple."""
        values = pickle.loads(data)
        if type(values) is not tuple:
            raise ValueError(f"expected a tuple, got {type(values).__name__}")
        return values
