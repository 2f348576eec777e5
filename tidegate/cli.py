"""The ``tidegate`` command. It only composes the layers' own commands, imported lazily so
that ``tidegate bench`` never loads the server and ``tidegate serve`` never loads bench.
``tidegate models`` is the engine layer's; its data folder comes from the server settings."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tidegate", description="Real-time inference streaming server."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    args_list = sys.argv[1:] if argv is None else argv
    command = next((a for a in args_list if not a.startswith("-")), None)
    if command == "bench":
        from tidegate.bench.cli import add_commands as add_bench

        add_bench(sub)
    elif command == "models":
        from tidegate.server.errors import ConfigError
        from tidegate.server.settings import Settings
        from tidegate.tools.cli import add_commands as add_models

        try:
            settings = Settings.load()
        except ConfigError as e:
            print(f"tidegate: {e}", file=sys.stderr)
            return 2
        add_models(sub, data_dir=settings.data_dir, models_file=settings.models_file)
    else:
        from tidegate.server.cli import add_commands as add_server
        from tidegate.server.db_cli import add_commands as add_db

        add_server(sub)
        add_db(sub)
        sub.add_parser("bench", help="run a benchmark scenario (tidegate bench --help)")
        sub.add_parser("models", help="prepare, list and verify models (tidegate models --help)")
    args = parser.parse_args(args_list)
    try:
        return int(args.func(args))
    except Exception as e:
        from tidegate.server.errors import ConfigError

        if isinstance(e, ConfigError):
            print(f"tidegate: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
