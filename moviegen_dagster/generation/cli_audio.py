"""Command line for the tiny audio models: `build-tiny-tts DIR` and `build-tiny-ambience DIR`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from moviegen_dagster.generation.tiny_audio import build_tiny_ambience_model, build_tiny_tts_model

# command -> (builder, help text, example directory)
COMMANDS = {
    "build-tiny-tts": (
        build_tiny_tts_model,
        "build the tiny random-weight Pocket TTS model into DIR (idempotent)",
        "$MOVIEGEN_HOME/models/tiny-tts",
    ),
    "build-tiny-ambience": (
        build_tiny_ambience_model,
        "build the tiny random-weight Stable Audio ambience pipeline into DIR (idempotent)",
        "$MOVIEGEN_HOME/models/tiny-ambience",
    ),
}


def add_subcommands(commands: Any) -> None:
    """Add the audio build commands to an argparse subparsers object."""
    for name, (_, help_text, example) in COMMANDS.items():
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument("dir", type=Path, help=f"target directory, e.g. {example}")


def run(args: argparse.Namespace) -> bool:
    """Run args.command if it is an audio command; False when it is not one of ours."""
    entry = COMMANDS.get(args.command)
    if entry is None:
        return False
    builder = entry[0]
    started = time.perf_counter()
    path = builder(args.dir)
    print(f"{args.command}: ready at {path} ({time.perf_counter() - started:.1f} s)")
    return True


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen audio build command."""
    parser = argparse.ArgumentParser(prog="python -m moviegen_dagster.generation.cli_audio")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
