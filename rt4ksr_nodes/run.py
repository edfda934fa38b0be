"""python -m rt4ksr_nodes.run workflow.json: the headless workflow runner (see runner/cli.py)."""

import sys

from .runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
