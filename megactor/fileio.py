"""Files the project writes and reads back: atomic writes, stale temporaries, loads that name the file.

Every output (videos, shards, curation records, checkpoints, exported models) is
written through ``atomic_path`` or ``atomic_folder``: a temporary in the target's
own folder, renamed over the target on success and removed on failure, so the
target appears complete or not at all. A temporary is named
``.megactor-tmp-<host>-<pid>-<random>``: a process killed mid-write (kill -9, a
crash, a power cut) cannot remove its own, so the first write of a later process
into that folder removes those whose writer is no longer alive on this host
(``remove_stale_temporaries``). A writer that is alive, in this process or
another (curation workers, DDP ranks), keeps its own. What is renamed into place
gets the permissions of a plain ``open``/``mkdir`` under the user's umask, not
the private ones ``mkstemp``/``mkdtemp`` give.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from typing import Callable, Iterator, TypeVar

TEMP_PREFIX = ".megactor-tmp-"
_HOST = re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname())[:32] or "host"
_TEMP_RE = re.compile(re.escape(TEMP_PREFIX) + r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")
_cleaned: set[str] = set()  # folders this process has already cleaned
T = TypeVar("T")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix() -> str:
    return f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporaries in ``folder`` left by dead writers of this host; returns what was removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        if not m or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(path)
    return removed


def _prepare_folder(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    if folder not in _cleaned:
        remove_stale_temporaries(folder)
        _cleaned.add(folder)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary file path beside `path` (same extension); on success it is renamed over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    _prepare_folder(folder)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_folder(path: str) -> Iterator[str]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an old one is removed)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    _prepare_folder(parent)
    tmp = tempfile.mkdtemp(prefix=_temp_prefix(), dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=_temp_prefix(), dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def check_output_file(path: str) -> None:
    """Fail now (OSError naming ``path``) if a file cannot be written at ``path`` later: it is a folder, a part of
    its folder is a file, or the nearest existing folder refuses new entries. Leaves nothing behind."""
    if os.path.isdir(path):
        raise OSError(f"{path}: is a folder, but a file is to be written there")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OSError(f"{path}: cannot be written ({existing} is a file, not a folder)")
    try:  # create and remove an entry: a check of the filesystem itself (read-only mounts, quotas), not of mode bits
        os.rmdir(tempfile.mkdtemp(prefix=_temp_prefix(), dir=existing))
    except OSError as e:
        raise OSError(f"{path}: cannot be written (a new entry in {existing} fails: {e.strerror or e})") from None


def check_input_file(path: str, role: str) -> None:
    """Fail now (OSError naming ``path`` and its ``role``) if ``path`` is not a file this process can read."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (the {role})" if not os.path.exists(path) else
                                f"{path}: the {role} is not a file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{path}: the {role} file cannot be read (permissions)")


class UnreadableFile(OSError):
    """A file that exists but cannot be loaded; the message names it and the cause."""


def load_named(path: str, load: Callable[[str], T]) -> T:
    """``load(path)``, with any failure to parse the file (truncated, corrupt, not that format) raised as one
    UnreadableFile naming ``path`` and the cause; a missing file stays a FileNotFoundError."""
    try:
        return load(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors, pickle, zip and EOF errors have no common base
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFile(f"{path}: not a readable checkpoint file ({type(e).__name__}: {cause})") from None
