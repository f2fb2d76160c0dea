"""Imported first by the Django view tests: configures Django for this process (once, shared
with the Celery tests, see tests/django_db.py), before DRF reads its settings at import."""

from tests.django_db import configure

configure()
