"""The destination folder of `cxrseg download`: what is installed there, and what --force may replace."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrseg.dataset import IMAGE_DIR, LAYOUT, MASK_DIR, list_images
from cxrseg.errors import DownloadError

PARTIAL_DIR = ".partial"  # DEST/.partial holds the archive while it downloads
MARKER = ".cxrseg-dataset.json"  # written into every dataset `cxrseg download` installs; --force replaces only those


def count_images(root: Path) -> dict[str, int]:
    """Number of image files in each of image/, mask/, test_image/, test_mask/ (0 when absent)."""
    return {name: len(list_images(root / name)) if (root / name).is_dir() else 0 for name in LAYOUT}


def is_present(dest: Path) -> bool:
    return (dest / IMAGE_DIR).is_dir() and (dest / MASK_DIR).is_dir()


def _only_dataset_layout(dest: Path) -> bool:
    """True when `dest` holds nothing but the dataset folders, and those hold nothing but image files."""
    for entry in dest.iterdir():
        if entry.name in (PARTIAL_DIR, MARKER):
            continue
        if entry.name not in LAYOUT or entry.is_symlink() or not entry.is_dir():
            return False
        files = list(entry.iterdir())
        if any(f.is_symlink() or not f.is_file() for f in files) or len(list_images(entry)) != len(files):
            return False
    return True


def installed_entries(root: Path) -> list[str]:
    """The names at the top of a dataset about to be installed, recorded in its MARKER."""
    return sorted(p.name for p in root.iterdir() if p.name != MARKER)


def _added_by_user(dest: Path) -> list[str]:
    """What sits at the top of `dest`, installed by cxrseg, that the MARKER does not list (the user put it there);
    a MARKER without the list (older versions) or unreadable stands for the dataset folders alone."""
    try:
        recorded = json.loads((dest / MARKER).read_text(encoding="utf-8")).get("entries")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not isinstance(recorded, list):
        recorded = list(LAYOUT)
    keep = {*map(str, recorded), MARKER, PARTIAL_DIR}
    return sorted(p.name for p in dest.iterdir() if p.name not in keep)


def check_destination(dest: Path, force: bool = False) -> None:
    """Refuse a file, a non-empty folder that holds no dataset, and (with `force`) a folder that cxrseg did not
    install and that holds more than the dataset layout, or one it installed where the user has added files: never
    delete what the user keeps there."""
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} is a file, not a folder; pick another --dest.")
    if dest.is_dir() and not is_present(dest) and any(p.name != PARTIAL_DIR for p in dest.iterdir()):
        raise DownloadError(f"{dest} is not empty and holds no image/ and mask/; pick an empty or new --dest.")
    if force and is_present(dest) and not (dest / MARKER).is_file() and not _only_dataset_layout(dest):
        raise DownloadError(
            f"--force would replace {dest}, which `cxrseg download` did not install (no {MARKER}) and which holds "
            "more than image/, mask/, test_image/ and test_mask/ with images; move your files out or pick "
            "another --dest."
        )
    if force and is_present(dest) and (dest / MARKER).is_file() and (added := _added_by_user(dest)):
        more = f" and {len(added) - 1} more" if len(added) > 1 else ""
        raise DownloadError(
            f"--force would delete {dest / added[0]}{more}, which `cxrseg download` did not install there; move "
            f"them out of {dest} or pick another --dest."
        )


def remove_stale_staging(dest: Path) -> None:
    """Delete what a killed run left: `.DEST.tmp-*` staging folders beside `dest` and `dest/.partial`."""
    stale = [*dest.parent.glob(f".{glob.escape(dest.name)}.tmp-*"), dest / PARTIAL_DIR]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def install(root: Path, dest: Path, staging: Path) -> None:
    """Move the finished dataset to `dest`; an old copy is moved aside only now, and back on failure."""
    previous = staging / "previous"
    if dest.exists():
        dest.rename(previous)
    try:
        root.rename(dest)
    except OSError:
        if previous.exists():
            previous.rename(dest)
        raise


def refuse_archive_in_dest(archive: Path, dest: Path) -> None:
    """The download replaces `dest` (--force), and deletes dest/.partial and the staging folders beside `dest`:
    never with the archive it reads inside."""
    where, inside = archive.resolve(), dest.resolve()
    staging = [p for p in where.parents if p.parent == inside.parent and p.name.startswith(f".{inside.name}.tmp-")]
    if where.is_relative_to(inside) or staging:
        folder = dest if where.is_relative_to(inside) else staging[0]
        raise DownloadError(
            f"Archive {archive} is inside {folder}, which the download replaces or deletes; move the archive out of "
            f"{folder} first."
        )


LOCK_TRIES = 5


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    """Hold `.DEST.lock` beside `dest` inside the block, so that a second download to `dest` stops at once instead
    of deleting the first one's partial file and staging folder. The lock file is removed by its holder, while
    held; the operating system releases the lock however the process ends."""
    try:
        import fcntl  # POSIX; elsewhere (Windows) downloads run unguarded, as `train` does
    except ImportError:
        yield
        return
    real = dest.resolve()  # one lock for every spelling of DEST ("." included)
    lock = real.parent / f".{real.name}.lock"
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        handle = _acquire(lock, dest, fcntl)
    except OSError as exc:
        raise DownloadError(
            f"Cannot create {lock} ({exc.strerror or exc}); check the permissions of {dest.parent} or pick another "
            "--dest."
        ) from exc
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                lock.unlink()  # before closing: a download waiting on this file sees it gone and tries again
            os.close(handle)


def _acquire(lock: Path, dest: Path, fcntl: Any) -> int | None:
    """An open, locked descriptor of `lock`, or None where the file system has no locks (some network mounts)."""
    for _ in range(LOCK_TRIES):
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(lock).st_ino == os.fstat(handle).st_ino:
                return handle
        except BlockingIOError:
            os.close(handle)
            raise DownloadError(
                f"{dest} is in use by another `cxrseg download` (it holds {lock}); wait for it to end, then run again."
            ) from None
        except FileNotFoundError:
            pass  # its holder removed it as we locked it: open the next one
        except OSError:
            os.close(handle)
            return None
        os.close(handle)
    raise DownloadError(f"Could not lock {lock}: other downloads keep replacing it; run again.")
