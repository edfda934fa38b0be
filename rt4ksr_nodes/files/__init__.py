"""Files: images read and written (images.py), atomic writes, safe paths and hashes (paths.py),
the released checkpoints found, verified and fetched (weights.py; Cancel and progress arrive as
callbacks). Imports nothing else of the package: every other part may use it.
"""
