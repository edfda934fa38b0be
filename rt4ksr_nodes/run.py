"""python -m rt4ksr_nodes.run workflow.json: the headless workflow runner (see runner/cli.py)."""

from .runner.cli import run

if __name__ == "__main__":
    run()
