"""``python -m idempotent``: the command line."""

import sys

from idempotent.cli import main

sys.exit(main())
