"""`python -m vla.cli ...` is `vla ...`."""

import sys

from vla.cli import main

sys.exit(main())
