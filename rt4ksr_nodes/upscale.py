"""`python -m rt4ksr_nodes.upscale ...`: runs the quick-inference CLI in upscale_cli."""

import sys

from .upscale_cli import main

if __name__ == "__main__":
    sys.exit(main())
