"""The ``idempotent`` command line (also ``python -m idempotent``).

Each sub-command lives in its own module that exposes ``register(subparsers)``; the module
adds its parser and sets ``func`` to a callable taking the parsed arguments and returning
the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Modules that contribute sub-commands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "idempotent.demo",
    "idempotent.migrate",
    "idempotent.admin",
    "idempotent.check.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="idempotent",
        description="Administer idempotency keys, create their table, check code for unprotected endpoints.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a sub-command not shipped in this build
            if exc.name != name and not name.startswith(f"{exc.name}."):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
