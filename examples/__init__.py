"""Runnable examples (``python examples/quickstart.py``), also run by the tests."""
