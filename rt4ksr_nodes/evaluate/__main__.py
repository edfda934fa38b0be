"""`python -m rt4ksr_nodes.evaluate`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
