"""Atomic file writes: a temporary name in the same folder, renamed over the target when complete."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cxrseg.errors import OutputError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it
TEMPORARY_EXTRA = 14  # bytes mkstemp's ".NAME." + 8 random characters + ".tmp" add to NAME
SHORT_NAME = 255 - TEMPORARY_EXTRA  # longest NAME (in bytes) kept whole in its temporary name (NAME_MAX is 255)


def describe_os_error(exc: OSError) -> str:
    """'No space left on device (ENOSPC)' and the like: what the user can act on."""
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason} ({code})" if code else reason


def output_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space"
    elif exc.errno == errno.ENAMETOOLONG:
        hint = "choose a shorter output name (at most 255 bytes per name)"
    else:
        hint = "choose another output path"
    return OutputError(f"cannot write {path}: {describe_os_error(exc)}; {hint}.")


@contextlib.contextmanager
def atomic_path(path: Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, give it the usual permissions
    (0666 less the umask, not mkstemp's 0600), optionally fsync it, and rename it over `path`.
    A killed process leaves at most a hidden `.NAME.*.tmp` file (`.HASH.*.tmp` for a name too long to take 14
    more bytes), never a half-written `path`. OSErrors (disk full, read-only folder, a file where a folder should
    be) become one OutputError naming `path`."""
    try:
        if path.is_dir():
            raise OutputError(f"cannot write {path}: it is a folder; give a file name instead.")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from exc
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temporary_prefix(name: str) -> str:
    """`.NAME.`, or `.HASH.` (16 hex digits of its SHA-256) when NAME is too long to take the temporary suffix."""
    raw = os.fsencode(name)
    if len(raw) <= SHORT_NAME:
        return f".{name}."
    return f".{hashlib.sha256(raw).hexdigest()[:16]}."


def write_text(path: Path, text: str, fsync: bool = False) -> None:
    with atomic_path(path, fsync) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
