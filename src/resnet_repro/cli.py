"""Command line: ``resnet-repro SUBCOMMAND`` (or ``python -m resnet_repro``). See --help of each subcommand.

Each subcommand's arguments and handler live in its own module of commands/ (``bench``'s four included); this
module only builds the top-level parser from ``COMMANDS``, turns the errors a user can fix into one ``error:``
line and exit status 2, and ends quietly when the reader of stdout goes away (``predict DIR | head``)."""
from __future__ import annotations

import argparse
import os
import select
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
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print "Exception ignored ..."
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a pipe of our own (a loader worker's) broke: a fault, not the user's `| head`
        # The reader has what it wanted. Point stdout at /dev/null so the flush at exit has nowhere to fail, and
        # exit as `cat` does when SIGPIPE ends it (128 + 13), so `set -o pipefail` scripts still see it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UserError, ConfigError, CheckpointError, RecordError, SourceError, PrepareError, LockError,
            ExportError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is closed: poll reports an error or hang-up on it."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() on this platform, or stdout has no file descriptor
        return False


if __name__ == "__main__":
    sys.exit(main())
