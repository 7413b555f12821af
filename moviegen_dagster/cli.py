"""`moviegen` command line: run the stack, migrate, manage API keys, and talk to the API."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from moviegen_dagster.cli_client import COMMANDS, add_client_commands
from moviegen_dagster.cli_client import run as run_client
from moviegen_dagster.settings import get_settings


def cmd_up(_: argparse.Namespace) -> int:
    """Start the whole stack in the foreground until Ctrl-C."""
    from moviegen_dagster.stack import Stack

    settings = get_settings()
    stack = Stack(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        env = stack.start()
        print(
            "\nMovieGen is up.\n"
            f"  API:        {settings.api_base_url}/api/v1  (docs: {settings.api_base_url}/docs)\n"
            f"  Dagster UI: {settings.dagster_url}\n"
            f"  API key (admin, every project): {env['MOVIEGEN_ADMIN_KEY']}\n"
            f"  Logs:       {stack.logs}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while not stop.wait(1.0):
            stack.check_alive()
    except Exception as exc:
        print(f"moviegen up: {exc}", file=sys.stderr)
        return 1
    finally:
        print("Stopping MovieGen...", flush=True)
        stack.stop()
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    """Create or upgrade the moviegen schema."""
    from moviegen_dagster.db import migrate

    migrate(get_settings().require_database_url())
    return 0


def cmd_dagster_yaml(args: argparse.Namespace) -> int:
    """Print the Dagster instance configuration for DATABASE_URL, REDIS_URL and the settings."""
    from moviegen_dagster.stack import dagster_yaml

    settings = get_settings()
    if not settings.database_url or not settings.redis_url:
        print("moviegen dagster-yaml: set DATABASE_URL and REDIS_URL", file=sys.stderr)
        return 2
    text = dagster_yaml(settings, settings.database_url, settings.redis_url)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Create, revoke or list API keys."""
    from moviegen_dagster import keys
    from moviegen_dagster.db import connect

    with connect(get_settings().require_database_url()) as conn:
        if args.keys_cmd == "create":
            raw = keys.new_key()
            expires = (
                datetime.now(UTC) + timedelta(days=args.expires_in_days)
                if args.expires_in_days
                else None
            )
            project = None if args.admin else args.project
            key_id = keys.store_key(
                conn, raw, args.name or f"cli:{project or 'admin'}", project, expires
            )
            print(
                json.dumps(
                    {
                        "key_id": key_id,
                        "api_key": raw,
                        "project_id": project,
                        "expires_at": expires.isoformat() if expires else None,
                    }
                )
            )
        elif args.keys_cmd == "rotate":
            if args.grace_hours < 0:
                print("--grace-hours must not be negative", file=sys.stderr)
                return 2
            try:
                raw = keys.rotate_key(conn, args.key_id, timedelta(hours=args.grace_hours))
            except LookupError as exc:
                print(str(exc), file=sys.stderr)
                return 1
            old = conn.execute(
                "SELECT expires_at FROM moviegen.api_keys WHERE key_id = %s", (args.key_id,)
            ).fetchone()
            until = old["expires_at"] if old else None
            print(
                json.dumps(
                    {
                        "rotated_key_id": args.key_id,
                        "api_key": raw,
                        "old_key_expires_at": until.isoformat() if until else None,
                    }
                )
            )
        elif args.keys_cmd == "revoke":
            if not keys.revoke_key(conn, args.key_id):
                print(f"no active key with id {args.key_id}", file=sys.stderr)
                return 1
            print(json.dumps({"key_id": args.key_id, "revoked": True}))
        else:
            print(json.dumps(keys.list_keys(conn), default=str, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `moviegen` command."""
    parser = argparse.ArgumentParser(prog="moviegen", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start the stack (embedded PostgreSQL/Redis unless configured)")
    sub.add_parser("migrate", help="create or upgrade the moviegen schema")
    dy = sub.add_parser(
        "dagster-yaml", help="print the dagster.yaml of a multi-host deployment (external services)"
    )
    dy.add_argument("--output", "-o", help="write it to this file instead of stdout")
    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    create = ksub.add_parser("create", help="create a key and print it once")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--project", help="project the key is scoped to")
    who.add_argument("--admin", action="store_true", help="a key for every project")
    create.add_argument("--name", help="a label for the key")
    create.add_argument("--expires-in-days", type=int, default=None)
    revoke = ksub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=int)
    ksub.add_parser("list", help="list keys (never the secrets)")
    rotate = ksub.add_parser("rotate", help="replace a key; the old one works for a grace period")
    rotate.add_argument("key_id", type=int)
    rotate.add_argument(
        "--grace-hours", type=float, default=24.0, help="hours the old key keeps working"
    )
    add_client_commands(sub, get_settings().api_base_url)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on usage errors and 0 for --help; keep that as a return value.
        return int(exc.code or 0)
    if args.cmd in COMMANDS:
        return run_client(args)
    handler = {
        "up": cmd_up,
        "migrate": cmd_migrate,
        "dagster-yaml": cmd_dagster_yaml,
        "keys": cmd_keys,
    }[args.cmd]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
