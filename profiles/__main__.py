"""``python -m profiles``: same as ``sparse-serve profile``."""

import sys

from .cli import main

sys.exit(main())
