"""Quick inference: the command behind `python -m rt4ksr_nodes.upscale` (upscale.py) and the
argument types the command-line tools share (args.py). Imports model, engine, video and files.
"""
