"""One writer per run folder: an exclusive `flock` on RUN/.lock, held while a process trains into the folder.

The kernel drops a flock when its holder exits, however it exits, so a killed trainer never leaves a
stale lock behind: the file may stay, but nobody holds it. Its contents (pid, host, start time) only
serve the message a second writer gets. The holder deletes the file while it still holds the lock, so
an acquirer checks after locking that the file it locked is still the one at the path.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from tstool.errors import InputError, RunLocked

LOCK_FILE = ".lock"
ATTEMPTS = 20  # each lost race (the file deleted or replaced between open and flock) costs one
# A holder writes its details just after locking; a refused start waits up to this long to read them
# (a loaded machine can deschedule the holder for a second).
HOLDER_WAIT_S = 5.0


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder, as its lock file says."""

    pid: int | None = None
    host: str | None = None
    started: str | None = None

    @classmethod
    def me(cls) -> Holder:
        return cls(os.getpid(), socket.gethostname(), datetime.now().astimezone().isoformat(timespec="seconds"))

    def describe(self) -> str:
        if self.pid is None:
            return "another process (its details are not written yet)"
        return f"process {self.pid} on {self.host} (started {self.started})"


def _read_holder(fd: int) -> Holder:
    """The holder's details; empty or half-written details are read again until they are whole."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        try:
            data = json.loads(os.pread(fd, 4096, 0))
            return Holder(int(data["pid"]), str(data["host"]), str(data["started"]))
        except (ValueError, KeyError, TypeError, OSError):
            if time.monotonic() > deadline:
                return Holder()
            time.sleep(0.02)


def _make_folders(path: Path) -> list[Path]:
    """Create `path` and its missing parents; return those created, outermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    created = []
    for folder in missing:
        try:
            folder.mkdir()
            created.append(folder)
        except FileExistsError:
            pass  # created meanwhile by another process, which may be taking the lock too
        except OSError as exc:
            _remove_folders(created)
            raise InputError(f"cannot create the run folder {path} ({exc.strerror}): pass another --out-dir")
    return created


def _remove_folders(created: list[Path]) -> None:
    """Remove the folders this process created, innermost first, as long as they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class RunLock:
    """The lock of one run folder; `acquire` it before touching the folder, `release` it when done."""

    def __init__(self, path: Path, fd: int, created: list[Path]) -> None:
        self.path, self._created = path, created
        # A file object closes its descriptor when collected, which unlocks a lock that was never released.
        self._file: BinaryIO | None = os.fdopen(fd, "r+b", buffering=0)

    @classmethod
    def acquire(cls, run_path: Path) -> RunLock:
        """Lock `run_path` (created if missing) for this process, or raise RunLocked naming the holder."""
        lock_path = run_path / LOCK_FILE
        for _ in range(ATTEMPTS):
            created = _make_folders(run_path)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # a failed start removed the folder it had created: create it again
                continue
            except OSError as exc:
                _remove_folders(created)
                raise InputError(f"cannot open {lock_path} ({exc.strerror}): pass an --out-dir you can write to")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLocked(
                    f"run folder {run_path} is being written by {holder.describe()}: wait for it to finish, "
                    f"stop it{f' (kill {holder.pid})' if holder.pid else ''}, or pass another --out-dir"
                )
            except OSError as exc:  # a file system without locks
                os.close(fd)
                _remove_folders(created)
                raise InputError(f"cannot lock {lock_path} ({exc.strerror}): pass an --out-dir on a local disk")
            if _same_file(fd, lock_path):
                lock = cls(lock_path, fd, created)
                lock._write_holder()
                return lock
            os.close(fd)  # locked a file its holder deleted on release: lock the one at the path now
        raise RunLocked(f"could not lock run folder {run_path}: other processes keep taking it; pass another --out-dir")

    def _write_holder(self) -> None:
        """Our pid, host and start time, for the message a second writer gets (best effort: a full disk
        leaves the details out, not the lock)."""
        assert self._file is not None
        holder = Holder.me()
        data = json.dumps({"pid": holder.pid, "host": holder.host, "started": holder.started}).encode()
        try:
            os.ftruncate(self._file.fileno(), 0)
            os.pwrite(self._file.fileno(), data, 0)
        except OSError:
            pass

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        """Delete the lock file (and the folders acquiring created, if nothing else was written), then unlock.

        Deleting before unlocking is what keeps the folder as it was after a start that failed."""
        if self._file is None:
            return
        try:
            if _same_file(self._file.fileno(), self.path):
                self.path.unlink()
            _remove_folders(self._created)
        except OSError:
            pass  # the folder is gone or read-only: unlocking below still frees it
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
