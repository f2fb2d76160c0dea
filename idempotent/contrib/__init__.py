"""Framework integrations, each an optional module behind the extra of the same name.

Every module adapts one framework's requests and responses to the framework-free HTTP core in
:mod:`idempotent.http` (or, for task queues, to the decorator) and nothing more; importing one
whose framework is missing raises an ImportError naming the extra to install, for example
``pip install 'idempotent[fastapi]'``.
"""
