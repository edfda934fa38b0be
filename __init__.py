"""ComfyUI entry point: this repository, cloned into ComfyUI's custom_nodes/, is the node pack.

ComfyUI imports this folder as a package without putting it on sys.path, so only relative
imports work here.
"""

from .rt4ksr_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
