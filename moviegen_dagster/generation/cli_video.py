"""Command line: `python -m moviegen_dagster.generation.cli_video build-tiny-video DIR`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

COMMAND = "build-tiny-video"
HELP = "build the tiny random-weight LTX-2 video+audio model into DIR (idempotent)"


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the build-tiny-video subcommand on an existing subparsers object."""
    build = commands.add_parser(COMMAND, help=HELP)
    build.add_argument(
        "dir", type=Path, help="target directory, e.g. $MOVIEGEN_HOME/models/tiny-video"
    )
    return build


def run(args: argparse.Namespace) -> int:
    """Run build-tiny-video with parsed arguments."""
    # Imported here so `--help` stays fast: the builder pulls in torch and diffusers.
    from moviegen_dagster.generation.tiny_video import build_tiny_video_model

    started = time.perf_counter()
    path = build_tiny_video_model(args.dir)
    print(f"tiny video model ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m moviegen_dagster.generation.cli_video")
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == COMMAND:
        return run(args)
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
