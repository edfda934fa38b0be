"""The one bridge to the application hosting the pack: ComfyUI when it is loaded (reached lazily,
never imported at import time), else the headless runner's settings (bridge.py). May import
files.weights (where the pack keeps its checkpoints) and nothing else of the package.
"""
