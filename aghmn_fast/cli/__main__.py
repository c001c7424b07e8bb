"""``python -m aghmn_fast.cli``: the ``aghmn-fast`` console script."""
import sys

from .program import main

sys.exit(main())
