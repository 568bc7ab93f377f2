"""`python -m vldd ...`: the same as the `vldd` command."""

import sys

from .cli import main

sys.exit(main())
