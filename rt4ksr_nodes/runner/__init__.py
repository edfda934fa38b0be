"""Headless runner: ComfyUI workflows without ComfyUI.

formats (read any workflow form) -> convert (editor graph to API prompt) -> validate (every
problem, before running) -> execute (ComfyUI's semantics, streamed folder batches) -> cli.

The top layer: imports nodes and everything below them; nothing of the package imports it but the
entry module run.py and the benchmarks.
"""
