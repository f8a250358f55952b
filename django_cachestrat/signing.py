"""MACs on what the app keeps in Redis, so that bytes it did not write are never used.

Anyone who can write to the cache's Redis could otherwise forge a cached row (a user with
``is_staff`` set, served until it expires), point a lookup at another row, or put a
pending write into a write-behind row, which the next flush writes to the database.
Every value the app stores carries a tag: a keyed BLAKE2b MAC (16 bytes) of the bytes and
of the name of the Redis key they are stored under, so bytes copied from another row's
key do not verify either. The key never goes to Redis.

What is signed, and how it is laid out (``tag`` is 16 raw bytes):

- an entry (``codec``): ``tag + entry``, bound to the entry's key name. The entry's
  header carries when it stops being usable, so a copy of an older entry put back later
  is refused once that time has passed;
- a lookup pointer: ``tag + <deadline, epoch seconds>:<pk>``, bound to the pointer's key;
- a write-behind value (a view's field, a pending field, in a batch or set aside):
  ``MARK + tag + value``, bound to the row (its key tag) and the field's name, so it moves
  between the row's hashes unchanged; a counter field's value in a *view* is not signed
  (Redis adds increments to it), see the README's Security section;
- a write-behind increment: a record ``tag + <amount>:<writer>:<number>`` appended to a
  list beside the deltas hash that sums it, bound to the row and the field. The flusher
  writes the sum of the records that verify, never the sum Redis holds.

Keys come from ``CACHESTRAT["SIGNING_KEYS"]`` (the first signs, every one listed
verifies: add a new one first, drop the old one once no entry signed with it can be
alive), else from ``SECRET_KEY`` then ``SECRET_KEY_FALLBACKS``. Each is turned into a MAC
key with ``salted_hmac`` once, when the settings are loaded (``conf``); the keyed hash
objects made then are copied for each tag, so a tag costs one copy and the hashing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from django.utils.crypto import salted_hmac

#: The bytes of a tag.
TAG = 16
#: The byte a signed write-behind value starts with (its plain form starts with another).
MARK = b"\x02"
#: Part of every schema fingerprint (``codec.fingerprint``): entries and views written
#: before values were signed are another schema's (a silent miss), not forgeries.
FORMAT = "mac-1"

# What a tag is of: the same bytes signed for one use never verify for another.
ENTRY, POINTER, FIELD, INCREMENT = b"e", b"p", b"f", b"i"
_USES = (ENTRY, POINTER, FIELD, INCREMENT)
# Between a key name (or a field's name) and what follows it: no key name the app builds
# has a newline (``KEY_PREFIX`` is checked for one, the other parts are plain or hashed).
_SEP = b"\n"
_SALT = "django_cachestrat.signing"
#: How many entries (of at most ``MEMO_BYTES``) a signer remembers as verified, per process:
#: at most about 2.5 MB.
MEMO_ENTRIES = 2048
MEMO_BYTES = 1024


class Unverified(ValueError):
    """Bytes whose tag does not verify: forged, copied from another key, or not signed."""


def derive(secret: str | bytes) -> bytes:
    """Return the MAC key made from ``secret`` (32 bytes), as ``conf`` does at load."""
    return salted_hmac(_SALT, "mac", secret=secret, algorithm="sha256").digest()


def _keyed(key: bytes, use: bytes):
    base = hashlib.blake2b(key=key, digest_size=TAG)
    base.update(use)
    return base


class Signer:
    """Tags bytes with the first key and accepts a tag made with any of them.

    ``keys`` are MAC keys (``derive``), newest first.
    """

    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._bases = {use: tuple(_keyed(k, use) for k in keys) for use in _USES}
        self._checks = {use: self._checker(use) for use in _USES}
        #: Key name -> the entry bytes last verified under it (``verified``, ``remember``).
        self.verified: dict[str, bytes] = {}

    @classmethod
    def from_secrets(cls, secrets: Sequence[str | bytes]) -> Signer:
        """Return a signer whose keys are derived from ``secrets``, the first signing."""
        return cls([derive(s) for s in secrets])

    def tag(self, use: bytes, name: bytes, body: bytes) -> bytes:
        """Return the tag of ``body`` stored under ``name`` for ``use`` (``ENTRY``, ...)."""
        h = self._bases[use][0].copy()
        h.update(name)
        h.update(_SEP)
        h.update(body)
        return h.digest()

    def checker(self, use: bytes) -> Callable[[bytes, bytes, bytes], bool]:
        """Return ``check(name, body, tag)``: does ``tag`` verify? For loops over many values.

        The first key is tried first: the one that signs, so usually the only one tried.
        """
        return self._checks[use]

    def _checker(self, use: bytes) -> Callable[[bytes, bytes, bytes], bool]:
        bases = self._bases[use]
        compare = hmac.compare_digest

        def check(name: bytes, body: bytes, tag: bytes) -> bool:
            for base in bases:  # newest first
                h = base.copy()
                h.update(name)
                h.update(_SEP)
                h.update(body)
                if compare(h.digest(), tag):
                    return True
            return False

        return check

    def remember(self, name: str, data: bytes) -> None:
        """Note that ``data`` (an entry, its tag included) verified under key ``name``.

        A hit reads the same bytes again and again: bytes equal to those last verified
        under the same key, by this signer (these keys), verify again, so comparing them
        (a ``memcmp``) stands for the MAC. It changes no outcome: the copy held is the
        genuine one, and any other bytes are verified. Bounded: ``MEMO_ENTRIES`` keys,
        entries of ``MEMO_BYTES`` or less (a larger entry's MAC is small beside its
        decoding); when full, it starts again empty. One per signer, so a change of the
        keys (a new setting) forgets it.
        """
        if len(data) <= MEMO_BYTES:
            if len(self.verified) >= MEMO_ENTRIES:
                self.verified.clear()
            self.verified[name] = data

    def verifies(self, use: bytes, name: bytes, body: bytes, tag: bytes) -> bool:
        """Tell whether ``tag`` is the tag of ``body`` under ``name`` with any listed key."""
        return self._checks[use](name, body, tag)

    # -- lookup pointers ---------------------------------------------------------------------

    def seal_pointer(self, key: str, pk: bytes, deadline: int) -> bytes:
        """Return the signed pointer to ``pk`` stored under ``key``, usable until ``deadline``.

        ``deadline``: epoch seconds, when the pointer's TTL ends.
        """
        body = b"%d:%s" % (deadline, pk)
        return self.tag(POINTER, key.encode(), body) + body

    def open_pointer(self, key: str, data: bytes, now: float) -> bytes | None:
        """Return the pk (or ``-``) a signed pointer holds; None once its deadline passed.

        Raises ``Unverified`` when its tag does not verify.
        """
        tag, body = data[:TAG], data[TAG:]
        if len(tag) < TAG or not self.verifies(POINTER, key.encode(), body, tag):
            raise Unverified("its MAC does not verify")
        deadline, _, pk = body.partition(b":")
        return pk if int(deadline) >= now else None

    # -- write-behind values and increments ----------------------------------------------------

    def seal_value(self, row: bytes, name: str, plain: bytes) -> bytes:
        """Return a write-behind value of field ``name`` of the row tagged ``row``, signed."""
        return MARK + self.tag(FIELD, row + _SEP + name.encode(), plain) + plain

    def open_value(self, row: bytes, name: str, data: bytes) -> bytes:
        """Return the plain bytes of a signed write-behind value; raise ``Unverified``."""
        if data[:1] != MARK:
            raise Unverified("not signed")
        tag, plain = data[1 : 1 + TAG], data[1 + TAG :]
        if len(tag) < TAG or not self.verifies(FIELD, row + _SEP + name.encode(), plain, tag):
            raise Unverified("its MAC does not verify")
        return plain

    def seal_increment(self, row: bytes, name: str, amount: int, writer: str, number: int) -> bytes:
        """Return the signed record of one increment of ``name`` by ``amount``.

        ``writer`` and ``number`` are the write's (``pending``): they make each record
        unique, so a copy of one in the same list counts once.
        """
        body = b"%d:%s:%d" % (amount, writer.encode(), number)
        return self.tag(INCREMENT, row + _SEP + name.encode(), body) + body

    def open_increment(self, row: bytes, name: str, record: bytes) -> tuple[int, bytes]:
        """Return ``(amount, writer:number)`` of a signed increment record; raise ``Unverified``."""
        tag, body = record[:TAG], record[TAG:]
        if len(tag) < TAG or not self.verifies(INCREMENT, row + _SEP + name.encode(), body, tag):
            raise Unverified("its MAC does not verify")
        amount, _, origin = body.partition(b":")
        return int(amount), origin


def plain_value(data: bytes) -> bytes:
    """Return a write-behind value without its tag, unverified (signing is off)."""
    return data[1 + TAG :] if data[:1] == MARK else data
