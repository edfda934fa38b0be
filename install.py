"""Install step, ComfyUI-Manager style: run with ComfyUI's Python, from this folder.

    python install.py [--from FOLDER] [--weights-dir DIR] [--skip-weights]

1. Installs the missing requirements from pyproject.toml, never torch (ComfyUI's torch is kept).
2. Fetches the released checkpoints, verified by SHA-256 (offline: --from or RT4KSR_WEIGHTS_FROM).
Safe to run again: what is present and verified is left alone.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def missing_requirements() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement

    project = tomllib.loads((HERE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    missing = []
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        if requirement.name == "torch":
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if installed not in requirement.specifier:
            missing.append(spec)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="folder holding the released .pth files")
    parser.add_argument("--weights-dir", type=Path, help="where checkpoints are kept (default: weights/)")
    parser.add_argument("--skip-weights", action="store_true", help="only install requirements")
    args = parser.parse_args(argv)

    missing = missing_requirements()
    if missing:
        print(f"[rt4ksr] installing: {' '.join(missing)}")
        subprocess.check_call([sys.executable, "-m", "pip", "install", *missing])
    try:
        importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        print(
            "[rt4ksr] torch is not installed in this Python. Install the build for your machine "
            "first (https://pytorch.org/get-started/locally/), then run install.py again.",
            file=sys.stderr,
        )
        return 1
    if args.skip_weights:
        return 0

    sys.path.insert(0, str(HERE))
    from rt4ksr_nodes.files import weights

    failed = False
    for name in weights.releases():
        try:
            path = weights.ensure(name, dest_dir=args.weights_dir, source_dir=args.source)
            print(f"[rt4ksr] {name}: {path} (SHA-256 verified)")
        except weights.WeightsError as error:
            print(f"[rt4ksr] {name}: {error}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
