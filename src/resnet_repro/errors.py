"""User-facing errors: what the command line prints as one line (``error: ...``) and exits 2 on.

Each module that validates input raises its own subclass (ConfigError, RecordError, ...) so callers can tell
them apart; `UserError` is for the commands' own argument checks. Kept apart from the command line (cli.py,
commands/) so that the modules it calls (bench, ...) can raise it without importing the command line back.
"""
from __future__ import annotations


class UserError(RuntimeError):
    """A command-line argument or combination that cannot be used; the message says what to give instead."""
