"""Command line: build the tiny offline models (`python -m moviegen_dagster.generation --help`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from moviegen_dagster.generation import cli_audio, cli_video
from moviegen_dagster.generation.tiny import build_tiny_image_model
from moviegen_dagster.generation.tiny_audio import build_tiny_ambience_model, build_tiny_tts_model
from moviegen_dagster.generation.tiny_video import build_tiny_video_model

# Directory names under the models root, as the `tiny` profile's settings expect them.
TINY_MODELS: dict[str, Callable[[Path], Path]] = {
    "tiny-image": build_tiny_image_model,
    "tiny-tts": build_tiny_tts_model,
    "tiny-ambience": build_tiny_ambience_model,
    "tiny-video": build_tiny_video_model,
}


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
    every = commands.add_parser(
        "build-all-tiny", help="build every tiny model under ROOT (idempotent)"
    )
    every.add_argument("root", type=Path, help="models root, e.g. $MOVIEGEN_HOME/models")
    cli_audio.add_subcommands(commands)
    cli_video.add_parser(commands)
    args = parser.parse_args(argv)

    if cli_audio.run(args):
        return 0
    if args.command == cli_video.COMMAND:
        return cli_video.run(args)
    started = time.perf_counter()
    if args.command == "build-tiny":
        path = build_tiny_image_model(args.dir)
        print(f"tiny image model ready at {path} ({time.perf_counter() - started:.1f} s)")
    elif args.command == "build-all-tiny":
        for name, builder in TINY_MODELS.items():
            builder(args.root / name)
        print(f"tiny models ready under {args.root} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
