"""Management commands of django_cachestrat."""
