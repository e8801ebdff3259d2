"""Writing a file so that readers never see half of it, with the permissions a user expects."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def umask() -> int:
    """This process's umask, read without changing it (Linux reports it in /proc; elsewhere
    it is set and put back at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path, mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """Write ``path`` through a temporary file beside it, renamed into place when the block
    ends: a kill mid-write leaves the previous file intact (at worst a ``.tmp`` that nothing
    reads). The file gets the mode an ordinary ``open`` would give it (0666 less the umask;
    ``mkstemp`` alone makes it 0600, unreadable to a group sharing the run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
