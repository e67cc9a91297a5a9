"""One writer per output folder: an exclusive lock that the kernel releases however the holder ends.

``hold(lock_path, what)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``lock_path`` and writes the holder's pid,
host and start time into it. A second process gets LockError at once (no waiting), naming the holder. The
kernel drops a flock when its process exits, kill -9 and crashes included, so a dead holder never blocks
anyone; the file it leaves behind still names it, and the next holder reports it as stale. A clean release
removes the file.

Two details make this exact:
* forked children (DataLoader workers) inherit the descriptor and with it the lock, which would then outlive
  a killed parent until its workers notice; every held descriptor is closed in a child right after fork.
* a file removed on release while another process had it open would give that process a lock on a file no one
  else sees; after locking, the holder checks that the path still names the inode it locked, else retries.

flock works on local file systems; on NFS it is emulated with POSIX locks (Linux >= 2.6.12), which also
exclude across hosts. Where they do not (an NFS mount without working locks), a free lock proves nothing about
a holder on another host: its lock file is taken over only with ``--force`` (train, prepare), and a holder on
another host is never called ended, since its pid cannot be checked from here.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

_HELD: dict[int, Path] = {}  # descriptor -> lock file, closed in forked children


def _close_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class LockError(RuntimeError):
    """The folder is held by another process, or the lock file cannot be made; the message names it."""


def _fields(text: str) -> dict:
    """The lock file's "pid=N host=H since=T" line and its "what=..." line."""
    lines = text.splitlines()
    fields = dict(part.split("=", 1) for part in (lines[0] if lines else "").split() if "=" in part)
    fields.update(("what", ln[5:]) for ln in lines[1:] if ln.startswith("what="))
    return fields


def _describe(text: str) -> str:
    fields = _fields(text)
    if not fields.get("pid"):
        return "a process that left no details"
    return (f"{fields.get('what', 'a process')} (pid {fields['pid']} on host {fields.get('host', '?')}, since "
            f"{fields.get('since', '?')})")


def _alive_here(text: str) -> bool:
    fields = _fields(text)
    if fields.get("host") != socket.gethostname() or not fields.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(fields["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _other_host(text: str) -> str | None:
    """The host named in a lock file's text when it is not this one: whether its process runs cannot be checked
    from here."""
    host = _fields(text).get("host")
    return host if host and host != socket.gethostname() else None


@contextlib.contextmanager
def hold(lock_path: Path, what: str, log=None, force: bool = False):
    """Hold ``lock_path`` exclusively for the ``with`` block; ``what`` names the folder's use in messages.

    A lock file left by a process on another host is taken over only with ``force`` (and a warning naming the
    host): its flock may not reach this host (NFS without working locks), so a free flock does not prove that
    process has ended."""
    lock_path = Path(lock_path)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LockError(f"cannot create the lock file {lock_path} ({e.strerror}): {lock_path.parent} must be a "
                            f"writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise LockError(f"cannot lock {lock_path} ({e.strerror})") from None
            where = _describe(holder)
            if _other_host(holder):
                hint = f" (on host {_other_host(holder)}: check there whether it still runs)"
            else:
                hint = "" if not holder or _alive_here(holder) else \
                    " (that process has ended; its loader workers may still be exiting: try again in a few seconds)"
            raise LockError(f"{lock_path.parent} is in use: {where} holds {lock_path}{hint}; wait for it to "
                            f"finish, or choose another folder for {what}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file between our open and our lock: take the new one
    try:
        left = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        host = _other_host(left)
        if host and not force:
            raise LockError(f"{lock_path} was left by {_describe(left)}, which cannot be checked from this host; if "
                            f"it has ended on {host}, run the command again with --force to take the folder over, "
                            "else wait for it or choose another folder")
        if host:
            log(f"warning: {lock_path} was left by {_describe(left)} on host {host}; taking it over (--force)")
        elif left:
            log(f"warning: {lock_path} was left by {_describe(left)}, which ended without releasing it (killed or "
                "crashed); taking it over")
        stamp = (f"pid={os.getpid()} host={socket.gethostname()} since={time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
                 f"what={what}\n")
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        _HELD[fd] = lock_path
    except BaseException:
        os.close(fd)
        raise
    try:
        yield lock_path
    finally:
        _HELD.pop(fd, None)
        with contextlib.suppress(OSError):
            os.unlink(lock_path)  # before unlocking: a waiter that opened it re-checks the inode and retries
        os.close(fd)


def hold_folder(folder: Path, what: str, log=None, force: bool = False):
    """Lock ``folder/run.lock`` (the folder is made if needed); a file in the folder's place is a LockError."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LockError(f"{folder} is a file, not a folder; give --out a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LockError(f"cannot create the folder {folder} ({e.strerror}); give --out a writable folder path") \
            from None
    return hold(folder / "run.lock", what, log, force)


def hold_output(out: Path, what: str, log=None, force: bool = False):
    """Lock ``<out>.lock`` next to ``out``: for outputs that are built elsewhere and renamed into place."""
    out = Path(out)
    if out.parent != out and not out.parent.exists():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LockError(f"cannot create the folder {out.parent} ({e.strerror})") from None
    return hold(out.with_name(out.name + ".lock"), what, log, force)
