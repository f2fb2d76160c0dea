"""``idempotent check``: find state-changing endpoints that lack idempotency, and fix them.

The checker parses Python source with :mod:`ast` (it never imports or runs the code it reads)
and uses only the standard library, so it works with a plain install of the package.
``import idempotent`` does not import it.
"""

from idempotent.check.config import CheckConfig, ConfigError, load_config
from idempotent.check.fixes import FixTemplate, register_fix_template, unregister_fix_template
from idempotent.check.rules import RULES, FileWarning, Finding, Rule
from idempotent.check.runner import Report, UsageError, check

__all__ = [
    "RULES",
    "CheckConfig",
    "ConfigError",
    "FileWarning",
    "Finding",
    "FixTemplate",
    "Report",
    "Rule",
    "UsageError",
    "check",
    "load_config",
    "register_fix_template",
    "unregister_fix_template",
]
