"""`python -m rt4ksr_nodes.upscale ...` runs the quick-inference CLI (cli/upscale.py).

The name is also the package's `upscale()` function. Importing this module would make Python bind
the package attribute `rt4ksr_nodes.upscale` to the module, so the module is made callable as
that function: `rt4ksr_nodes.upscale(model, image)` works whichever the attribute holds.
"""

import sys
import types

from .engine import upscale as _upscale
from .cli.upscale import main


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return _upscale(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
