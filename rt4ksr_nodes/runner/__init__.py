"""Headless runner: ComfyUI workflows without ComfyUI.

formats (read any workflow form) -> convert (editor graph to API prompt) -> validate (every
problem, before running) -> execute (ComfyUI's semantics, streamed folder batches) -> cli.
"""
