"""Fetch the lung dataset (Kaggle, a URL or a local archive) into the folder `cxrseg train` reads."""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrseg.config import DownloadSettings
from cxrseg.dataset import dataset_splits
from cxrseg.download.destination import (
    MARKER,
    PARTIAL_DIR,
    check_destination,
    count_images,
    install,
    installed_entries,
    is_present,
    locked,
    refuse_archive_in_dest,
    remove_stale_staging,
)
from cxrseg.download.extract import extract_dataset
from cxrseg.download.kaggle import kaggle_credentials
from cxrseg.download.transfer import Progress, Retryable, Stalled, Transfer
from cxrseg.errors import DataError, DownloadError
from cxrseg.files import write_text
from cxrseg.signals import sigterm_raises

backoff_seconds = 1.0  # the first retry waits this long, each next one twice as long; tests shrink it
MAX_BACKOFF_SECONDS = 60.0


@dataclass
class DownloadResult:
    """What `download_dataset` did.

    Attributes:
        dest: the dataset folder (holds image/, mask/ and usually test_image/, test_mask/).
        already_present: True when nothing was fetched because dest already held a dataset.
        counts: image files per folder, e.g. {"image": 2000, "mask": 2000, "test_image": 200, "test_mask": 200}.
        source: the URL or archive path, for the user.
    """

    dest: Path
    already_present: bool
    counts: dict[str, int]
    source: str


def _fetch(
    url: str,
    target: Path,
    settings: DownloadSettings,
    headers: Mapping[str, str],
    on_progress: Progress | None,
    kaggle_dataset: str | None,
) -> None:
    """Stream `url` to `target`: exponential backoff on transient failures, resume with Range."""
    failures = 0
    with open(target, "wb") as out:
        transfer = Transfer(url, out, headers, settings, on_progress, kaggle_dataset)
        while True:
            before = transfer.done
            try:
                transfer.attempt()
                return
            except Retryable as exc:
                reason, stalled = str(exc), isinstance(exc, Stalled)
            failures = 0 if transfer.done > before and not stalled else failures + 1  # progress earns fresh retries
            if failures > settings.retries:
                got = f" at {transfer.done} of {transfer.total} bytes" if transfer.total else ""
                raise DownloadError(
                    f"Download of {url} failed{got} after {settings.retries + 1} failed attempts in a row ({reason}); "
                    "the partial file was deleted. Check your network connection and run again."
                )
            time.sleep(min(backoff_seconds * 2 ** (failures - 1), MAX_BACKOFF_SECONDS))
            transfer.check_deadline()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stops_on_sigterm(function: Callable[..., DownloadResult]) -> Callable[..., DownloadResult]:
    """SIGTERM raises inside `function` (main thread only), so its clean-up runs as it does for Ctrl-C."""

    def stopped() -> DownloadError:
        error = DownloadError("Download stopped by SIGTERM; its partial files were removed. Run it again.")
        error.exit_code = 128 + signal.SIGTERM
        return error

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> DownloadResult:
        with sigterm_raises(stopped):
            return function(*args, **kwargs)

    return wrapper


@_stops_on_sigterm
def download_dataset(
    settings: DownloadSettings,
    dest: Path,
    *,
    url: str | None = None,
    archive: Path | None = None,
    sha256: str | None = None,
    force: bool = False,
    on_progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
    kaggle_json: Path | None = None,
    kaggle_base_url: str = "https://www.kaggle.com/api/v1",
) -> DownloadResult:
    """Put a dataset with image/, mask/, test_image/, test_mask/ in `dest`, from Kaggle, `url` or `archive`.

    Args:
        settings: Kaggle dataset name, retries, timeout and extraction limits.
        dest: the dataset folder to create (Settings.data.root by default in the CLI).
        url / archive: an http(s) or local zip or tar(.gz) instead of Kaggle; an archive is only read.
        sha256: expected checksum of the archive, hex.
        force: replace a dataset already in `dest` (kept until the new one is complete).
        on_progress: called with (bytes_done, total_or_None) while downloading.
        env: where KAGGLE_USERNAME, KAGGLE_KEY, KAGGLE_CONFIG_DIR are read (the CLI passes os.environ).
        kaggle_json: credentials file (default ~/.kaggle/kaggle.json).
        kaggle_base_url: Kaggle API root.

    Returns a DownloadResult; `already_present` is True (and nothing fetched) when `dest` held image/ and mask/.
    Raises DownloadError with a one-line message saying what to do; nothing half-done is left behind.
    """
    dest, archive = Path(dest), Path(archive) if archive is not None else None
    source, kaggle_dataset = _source(settings, url, archive, kaggle_base_url)
    expected = _expected_sha256(sha256)

    if is_present(dest) and not force:
        return DownloadResult(dest, True, count_images(dest), source)
    if archive is not None:
        refuse_archive_in_dest(archive, dest)
    check_destination(dest, force)
    headers = _kaggle_headers(env or {}, kaggle_json) if kaggle_dataset is not None else {}
    if archive is not None and not archive.is_file():
        raise DownloadError(f"Archive {archive} not found; fix the --archive path.")
    with locked(dest):
        if is_present(dest) and not force:  # another download finished while this one started
            return DownloadResult(dest, True, count_images(dest), source)
        check_destination(dest, force)
        remove_stale_staging(dest)  # no other download is using them: it would hold the lock
        counts = _download(settings, dest, source, archive, expected, headers, on_progress, kaggle_dataset)
    return DownloadResult(dest, False, counts, source)


def _download(
    settings: DownloadSettings,
    dest: Path,
    source: str,
    archive: Path | None,
    expected: str | None,
    headers: Mapping[str, str],
    on_progress: Progress | None,
    kaggle_dataset: str | None,
) -> dict[str, int]:
    """Fetch (unless `archive` is given), check, unpack and install; clean up whatever happens. Returns the counts."""
    created = not dest.exists()
    partial_dir = dest / PARTIAL_DIR
    try:
        archive_path = archive
        if archive is None:
            archive_path = partial_dir / _archive_name(source)
            partial_dir.mkdir(parents=True, exist_ok=True)
            _fetch(source, archive_path, settings, headers, on_progress, kaggle_dataset)
        if expected is not None:
            _check_sha256(archive_path, expected, source, downloaded=archive is None)
        counts = _unpack_and_install(archive_path, dest, settings, source, partial_dir)
    except OSError as exc:
        raise _os_error(exc, dest) from exc
    finally:
        if partial_dir.is_dir():
            shutil.rmtree(partial_dir, ignore_errors=True)
        if created and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
    return counts


def _source(
    settings: DownloadSettings, url: str | None, archive: Path | None, kaggle_base_url: str
) -> tuple[str, str | None]:
    """What the download reads from, as shown to the user, and the Kaggle dataset name when it is Kaggle."""
    if url is not None and archive is not None:
        raise DownloadError("Pass either --url or --archive, not both.")
    if archive is not None:
        return str(archive), None
    if url is not None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise DownloadError(f"--url must start with http:// or https://, got {url!r}.")
        return url, None
    kaggle_dataset = settings.kaggle_dataset
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", kaggle_dataset):
        raise DownloadError(f"download.kaggle_dataset must look like owner/name, got {kaggle_dataset!r}.")
    return f"{kaggle_base_url.rstrip('/')}/datasets/download/{kaggle_dataset}", kaggle_dataset


def _kaggle_headers(env: Mapping[str, str], kaggle_json: Path | None) -> dict[str, str]:
    user, key = kaggle_credentials(env, kaggle_json)
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def _expected_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    expected = sha256.strip().lower()
    if not expected:  # `--sha256 "$UNSET"` must not turn the check off
        raise DownloadError("--sha256 is empty; give the archive's 64 hex digits, or leave --sha256 out.")
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DownloadError(f"--sha256 must be 64 hex digits, got {sha256!r}.")
    return expected


def _check_sha256(archive_path: Path, expected: str, source: str, *, downloaded: bool) -> None:
    if (actual := _sha256(archive_path)) != expected:
        deleted = "; the partial file was deleted" if downloaded else ""
        raise DownloadError(f"sha256 mismatch for {source}: expected {expected}, got {actual}{deleted}.")


def _archive_name(source: str) -> str:
    """A safe file name for the downloaded archive, from the URL's last path part."""
    return re.sub(r"[^\w.-]", "_", Path(urllib.parse.urlsplit(source).path).name) or "dataset.zip"


def _os_error(exc: OSError, dest: Path) -> DownloadError:
    if exc.errno == errno.ENOSPC:
        return DownloadError(
            f"No space left on the disk holding {dest.parent}; free some space or pick another --dest."
        )
    return DownloadError(f"{exc.filename or dest}: {exc.strerror or exc}; check the path and permissions.")


def _unpack_and_install(
    archive_path: Path, dest: Path, settings: DownloadSettings, source: str, partial_dir: Path
) -> dict[str, int]:
    """Extract into a staging folder beside `dest`, check the layout, then swap it in; returns the counts."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        root = extract_dataset(archive_path, unpacked, settings, source)
        try:
            dataset_splits(root)
        except DataError as exc:  # its paths lie in the staging folder, deleted by the time the user reads them
            inside = str(exc).replace(f"{unpacked}{os.sep}", "")
            raise DownloadError(f"{source} unpacked, but the dataset in it is unusable: {inside}") from exc
        counts = count_images(root)
        marker = {"source": source, "counts": counts, "entries": installed_entries(root)}
        write_text(root / MARKER, json.dumps(marker) + "\n")
        shutil.rmtree(partial_dir, ignore_errors=True)
        install(root, dest, staging)
        return counts
    finally:
        shutil.rmtree(staging, ignore_errors=True)
