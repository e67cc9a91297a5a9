"""Command line: ``resnet-repro SUBCOMMAND`` (or ``python -m resnet_repro``). See --help of each subcommand.

Each subcommand's arguments and handler live in its own module of commands/ (``bench``'s four included); this
module only builds the top-level parser from ``COMMANDS`` and turns the errors a user can fix into one ``error:``
line and exit status 2."""
from __future__ import annotations

import argparse
import sys

from .commands import bench, env, evaluate, export, model, predict, prepare, report, train, verify
from .errors import UserError

# In the order --help lists them in.
COMMANDS = (env, model, prepare, verify, train, evaluate, report, export, predict, bench)


def build_parser() -> argparse.ArgumentParser:
    # --help shows the docstring's first paragraph; the rest is for readers of this file.
    p = argparse.ArgumentParser(prog="resnet-repro", description=__doc__.split("\n\n", 1)[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.shards.staging import PrepareError
    from .data.shards.records import RecordError
    from .data.sources.download import SourceError
    from .export import ExportError
    from .folder_lock import LockError
    from .runtime import DeviceError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ConfigError, CheckpointError, RecordError, SourceError, PrepareError, LockError,
            ExportError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
