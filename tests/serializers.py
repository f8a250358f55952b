import pickle

from django_cachestrat.serializers import Serializer


class ReversedPickle(Serializer):
    """A serializer of our own, to show the setting is honoured (bytes stored reversed)."""

    def dumps(self, values):
        return pickle.dumps(values)[::-1]

    def loads(self, data):
        return pickle.loads(data[::-1])


class RefusesMarked(Serializer):
    """The default serializer, but a str starting with ``unstorable`` is a value it cannot
    carry (as a field the default cannot carry would be, with check E007 silenced)."""

    def __init__(self):
        from django_cachestrat.serializers import MsgpackSerializer

        self.inner = MsgpackSerializer()

    def dumps(self, values):
        if any(type(v) is str and v.startswith("unstorable") for v in values):
            raise TypeError("cannot carry a marked str")
        return self.inner.dumps(values)

    def loads(self, data):
        return self.inner.loads(data)
