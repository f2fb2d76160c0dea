"""Runnable examples (``python examples/quickstart.py``, ``uvicorn examples.fastapi_app:app``).

The tests run them too.
"""
