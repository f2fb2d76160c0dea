"""Runnable example applications (``uvicorn examples.fastapi_app:app``), also used by the tests."""
