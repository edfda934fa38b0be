"""`python -m rt4ksr_nodes.bench`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
