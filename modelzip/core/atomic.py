"""Files written so that nothing is lost: temporary file in the same folder, fsync, rename.

A reader sees either the old file or the new one, never half of one; a full disk or an unwritable
folder raises :class:`~modelzip.core.errors.ModelzipError` and leaves the existing file as it was. A
process killed mid-write (``kill -9``) leaves its temporary file behind; the next write of the
same name removes it (the writer's process id is in the name, so a live writer's file is kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelzip.core.errors import ModelzipError


def cache_dir() -> Path:
    """modelzip's cache folder: ``$MODELZIP_CACHE`` or ``~/.cache/modelzip``."""
    root = os.environ.get("MODELZIP_CACHE") or Path.home() / ".cache" / "modelzip"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


#: A temporary file without a writer's process id in its name (written by an older version) is
#: taken as abandoned after this many seconds.
STALE_SECONDS = 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its file
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove ``.NAME.PID.XXXX.tmp`` files next to ``path`` whose writer is no longer running
    (and older pid-less ones); returns what was removed."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for tmp in candidates:
        middle = tmp.name[len(prefix) :]
        if not middle.endswith(".tmp"):
            continue
        parts = middle.split(".")  # PID, mkstemp's random part, "tmp"
        try:
            if len(parts) == 3 and parts[0].isdigit():
                pid = int(parts[0])
                stale = pid != os.getpid() and not _pid_alive(pid)
            else:
                stale = time.time() - tmp.stat().st_mtime > STALE_SECONDS
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
        os.close(fd)
    except OSError as e:
        raise ModelzipError(f"cannot write {path}: {e.strerror or e}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise ModelzipError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def safe_join(root: str | Path, *parts: str) -> Path:
    """``root / parts``, refusing a result outside ``root``.

    For names read from files, recipes or grids that become paths under an output folder: an
    absolute name, ``..`` or a symbolic link must not write elsewhere.
    """
    base = Path(root).resolve()
    for part in parts:
        if not isinstance(part, str) or not part or "\x00" in part:
            raise ModelzipError(f"invalid file name {part!r} for a path under {root}")
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise ModelzipError(f"the path {'/'.join(parts)!r} escapes the output folder {root}")
    return path


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
