"""Command line: `python -m moviegen_dagster.generation build-tiny DIR`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from moviegen_dagster.generation.tiny import build_tiny_image_model


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m moviegen_dagster.generation")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build-tiny", help="build the tiny random-weight image model into DIR (idempotent)"
    )
    build.add_argument(
        "dir", type=Path, help="target directory, e.g. $MOVIEGEN_HOME/models/tiny-image"
    )
    args = parser.parse_args(argv)

    if args.command == "build-tiny":
        started = time.perf_counter()
        path = build_tiny_image_model(args.dir)
        print(f"tiny image model ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
