"""ComfyUI entry point: this repository, cloned into ComfyUI's custom_nodes/, is the node pack.

ComfyUI imports this folder as a package without putting it on sys.path, so only relative
imports work here.
"""

# The nodes arrive with the node-pack layer; until then the pack loads and registers nothing.
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
