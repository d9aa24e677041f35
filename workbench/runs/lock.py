"""The lock of a folder that one process writes at a time: a run folder, a sweep folder.

``<folder>/.lock`` is held with ``flock`` (exclusive, non-blocking) by the writing process; the OS
drops it when that process dies, so a ``kill -9`` never leaves the folder locked. The file holds the
holder's pid and start time, for the message a second writer gets.

Example:
    >>> lock = FolderLock("/tmp/no-such-folder")
    >>> lock.locked_by_other()
    False
    >>> with FolderLock("/tmp/a-sweep", "sweep folder"):  # doctest: +SKIP
    ...     pass  # a second process taking it now gets RunInUseError
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from workbench.errors import RunFolderError, RunInUseError


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class FolderLock:
    """An exclusive lock on a folder, taken by the one process that writes it.

    Args:
        path: the folder (created by :meth:`acquire` when missing).
        kind: what the folder is, for messages (``"run folder"``, ``"sweep folder"``).
    """

    NAME = ".lock"

    def __init__(self, path: str | os.PathLike, kind: str = "run folder") -> None:
        self.path = Path(path)
        self.kind = kind
        self._fd: int | None = None
        self._created = False  # acquire made the folder: release removes it again when nothing else landed

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def file(self) -> Path:
        return self.path / self.NAME

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def locked_by_other(self) -> bool:
        """True when another process (or another open of this folder) holds the lock now."""
        try:
            fd = os.open(self.file, os.O_RDONLY)
        except OSError:  # no lock file (or no folder): nobody holds it
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def acquire(self) -> None:
        """Take the lock (the folder is created when missing).

        Raises:
            RunFolderError: the path is a file, not a folder.
            RunInUseError: another process holds the lock (the message names its pid and start time).
        """
        if self._fd is not None:
            return
        for _ in range(5):  # the last holder may remove the lock file between our open and our flock
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunInUseError(f"{self.path} is in use by {holder}; wait for it to finish, stop it, "
                                    f"or choose another {self.kind}") from None
            if self._is_current(fd):
                break
            os.close(fd)
        else:
            raise RunInUseError(f"{self.path}: its lock file keeps being replaced; choose another {self.kind}")
        try:  # who holds it, for a second writer's message; a full disk must not stop the run here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {_now()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd

    def _open(self) -> int:
        existed = self.path.is_dir()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunFolderError(f"{self.path} is a file, not a {self.kind}; choose another {self.kind}") from None
        self._created = self._created or not existed
        return os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the folder's lock file (not one its last holder removed meanwhile)."""
        try:
            return os.stat(self.file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Let the lock go; a folder that holds nothing but the lock file loses it (and the folder goes
        too when :meth:`acquire` made it), so a run that failed before writing anything leaves nothing."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if [p.name for p in self.path.iterdir()] == [self.NAME]:
                self.file.unlink()  # still held: a process that opened it meanwhile finds it replaced
                if self._created:
                    os.rmdir(self.path)  # fails, harmlessly, if another writer's lock file appeared
        except OSError:
            pass
        finally:
            os.close(fd)
            self._created = False
