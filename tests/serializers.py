import pickle

from django_cachestrat.serializers import Serializer


class ReversedPickle(Serializer):
    """A serializer of our own, to show the setting is honoured (bytes stored reversed)."""

    def dumps(self, values):
        return pickle.dumps(values)[::-1]

    def loads(self, data):
        return pickle.loads(data[::-1])
