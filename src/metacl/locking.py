"""An exclusive lock on an output directory, so that two processes never write one.

``metacl run`` and ``metacl meta-train`` hold it on their output directory while
they run; a second process given the same directory stops with a clear error instead
of writing checkpoints and results beside the first. A sweep's worker holds it on
each run's folder and waits for it instead, so that two sweeps sharing run folders
take turns: the second finds the run finished and skips it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from metacl.errors import CheckpointError

__all__ = ["LOCK", "directory_lock"]

LOCK = ".lock"


@contextlib.contextmanager
def directory_lock(path: Path | None, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on run directory ``path`` (created if missing) while
    the block runs; ``None`` (a run that writes nothing) locks nothing.

    A second process given the same directory gets a clear error instead of
    writing checkpoints and results beside the first, or, with ``wait``, blocks
    until the first is done. The holder's pid is written into the lock file for that
    error. The operating system drops the lock when its process ends, killed or not,
    so an interrupted run leaves no stale lock behind and can be resumed at once.

    Raises:
        CheckpointError: Another process holds the lock (its pid is named), and
            ``wait`` is false.
    """
    if path is None:
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    with open(path / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise CheckpointError(
                f"run directory {str(path)!r} is in use by another metacl process "
                f"(pid {holder}); wait for it to finish, or give another output "
                "directory (--out)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
