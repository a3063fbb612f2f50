"""`python -m llamaforge ...` (used by `torchrun -m llamaforge train ...`)."""

import sys

from llamaforge.cli import main

sys.exit(main())
