"""Safe unpacking of dataset archives (zip, tar, tar.gz), and finding the dataset inside them."""

from __future__ import annotations

import contextlib
import errno
import lzma
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cxrseg.config import DownloadSettings
from cxrseg.dataset import IMAGE_DIR, MASK_DIR
from cxrseg.errors import DownloadError

SKIPPED_TOP = ("__MACOSX",)  # macOS resource forks mirror the real tree; never a dataset
CHUNK_BYTES = 1 << 20
# first bytes of a zip (a member or an empty archive), and the tarfile mode for gzip, bzip2 and xz; a plain tar says
# "ustar" at offset 257
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
TAR_MAGIC = {b"\x1f\x8b": "r:gz", b"BZh": "r:bz2", b"\xfd7zXZ\x00": "r:xz"}
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)  # what zipfile reads
# what reading a damaged archive raises: gzip's CRC and bzip2's data errors are OSErrors without an errno
DECODE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


@contextlib.contextmanager
def _decoding(source: str) -> Iterator[None]:
    """Turn the errors of reading (decompressing, checking) a damaged archive into one DownloadError; a real I/O
    error (with an errno) and the errors of writing what was read pass through."""
    try:
        yield
    except DECODE_ERRORS as exc:
        raise DownloadError(f"{source} is corrupt ({exc}); fetch it again.") from exc
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise DownloadError(f"{source} is corrupt ({exc}); fetch it again.") from exc


class _Budget:
    """Counts files and bytes written against the zip-bomb limits of DownloadSettings: a file count, and a size of
    max_extract_ratio times the archive's, at most max_extract_bytes."""

    def __init__(self, settings: DownloadSettings, source: str, archive_bytes: int):
        self.max_files, self.source = settings.max_extract_files, source
        by_ratio = int(settings.max_extract_ratio * archive_bytes)
        self.max_bytes = min(settings.max_extract_bytes, by_ratio)
        ratio = f"{settings.max_extract_ratio:g} times its own size ({self.max_bytes} bytes)"
        self.limit = (  # the message names the limit that binds
            f"{ratio}, the download.max_extract_ratio limit; raise CXRSEG_DOWNLOAD__MAX_EXTRACT_RATIO"
            if by_ratio < settings.max_extract_bytes
            else f"{self.max_bytes} bytes, the download.max_extract_bytes limit; "
            "raise CXRSEG_DOWNLOAD__MAX_EXTRACT_BYTES"
        )
        self.bytes = self.files = 0

    def check(self, extra_bytes: int, extra_files: int) -> None:
        if self.files + extra_files > self.max_files:
            raise DownloadError(
                f"{self.source} holds more than {self.max_files} files and folders, the download.max_extract_files "
                "limit; raise CXRSEG_DOWNLOAD__MAX_EXTRACT_FILES if you trust this archive."
            )
        if self.bytes + extra_bytes > self.max_bytes:
            raise DownloadError(f"{self.source} unpacks to more than {self.limit} if you trust this archive.")

    def entry(self, size: int) -> None:
        """Count one archive entry, a file or a folder (skipped ones too), and check its announced size."""
        self.check(size, 1)
        self.files += 1

    def copy(self, src: IO[bytes], target: Path) -> None:
        """Write one member, counting real bytes (headers may lie about sizes)."""
        with open(target, "wb") as out:
            while chunk := _read(src, self.source):
                self.check(len(chunk), 0)
                self.bytes += len(chunk)
                out.write(chunk)


@contextlib.contextmanager
def _writing(name: str, source: str) -> Iterator[None]:
    """Name the archive member, not the staging path deleted by then, when its name cannot be written here."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise DownloadError(
                f"{source} holds a name too long for this file system ({name!r}); unpack it with another tool and "
                "re-pack it with shorter names, or pick a --dest on another file system."
            ) from exc
        if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EILSEQ, errno.EINVAL):
            raise DownloadError(
                f"{source} holds {name!r}, which this file system cannot store beside the other entries "
                f"({exc.strerror}); unpack it with another tool and re-pack it, or pick a --dest on another file "
                "system."
            ) from exc
        raise


def _read(src: IO[bytes], source: str) -> bytes:
    with _decoding(source):
        return src.read(CHUNK_BYTES)


def _safe_parts(name: str, source: str) -> tuple[str, ...] | None:
    """Path parts of a member name, None for skipped junk; refuses absolute paths and `..`."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"[A-Za-z]:", clean):
        raise DownloadError(f"{source} holds an absolute path ({name!r}); refusing to unpack it.")
    parts = tuple(p for p in clean.split("/") if p not in ("", "."))
    if ".." in parts:
        raise DownloadError(f"{source} holds a path leaving its folder ({name!r}); refusing to unpack it.")
    if not parts or parts[0] in SKIPPED_TOP:
        return None
    return parts


class _Paths:
    """Every path an archive writes, compared case-folded (as a macOS or Windows disk would): refuses a file written
    twice, which silently kept the last copy, and a file where a folder goes."""

    def __init__(self, source: str):
        self.source = source
        self.files: dict[tuple[str, ...], str] = {}  # folded path -> the member name that writes it
        self.folders: dict[tuple[str, ...], str] = {}

    def add(self, name: str, parts: tuple[str, ...] | None, is_dir: bool) -> None:
        if parts is None:
            return
        key = tuple(unicodedata.normalize("NFC", p).casefold() for p in parts)
        for depth in range(1, len(key) + (1 if is_dir else 0)):
            if (other := self.files.get(key[:depth])) is not None:
                self._clash(name, other)
            self.folders.setdefault(key[:depth], name)
        if is_dir:
            return
        if (other := self.files.get(key)) is not None:
            raise DownloadError(
                f"{self.source} holds {name!r} twice"
                + (f" (also as {other!r})" if other != name else "")
                + "; only one copy can be unpacked, so re-pack the archive with each file once."
            )
        if (other := self.folders.get(key)) is not None:
            self._clash(name, other)
        self.files[key] = name

    def _clash(self, name: str, other: str) -> None:
        raise DownloadError(
            f"{self.source} holds both a file and a folder at one path ({other!r} and {name!r}, compared ignoring "
            "case); re-pack the archive so that they differ."
        )


def _refuse_special(name: str, source: str) -> None:
    raise DownloadError(f"{source} holds a link or device file ({name!r}); refusing to unpack it.")


def _prepare(into: Path, parts: tuple[str, ...] | None, is_dir: bool) -> Path | None:
    """Create the folder for an archive entry; return where a file's bytes go (None: nothing to copy)."""
    if parts is None:
        return None
    target = into.joinpath(*parts)
    if is_dir:
        target.mkdir(parents=True, exist_ok=True)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _zip_dir(info: zipfile.ZipInfo) -> bool:
    """ZipInfo.is_dir without its IndexError on a member with an empty name (skipped as junk)."""
    return info.filename.endswith("/")


def _extract_zip(archive: Path, into: Path, budget: _Budget, source: str) -> None:
    with _decoding(source):
        opened = zipfile.ZipFile(archive)  # reads the index
    with opened as zf:
        infos, paths = zf.infolist(), _Paths(source)
        budget.check(sum(i.file_size for i in infos), len(infos))  # folders count as entries too
        for info in infos:  # vet every entry before writing anything
            parts = _safe_parts(info.filename, source)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                _refuse_special(info.filename, source)
            paths.add(info.filename, parts, _zip_dir(info))
            if info.flag_bits & 0x1:
                raise DownloadError(
                    f"{source} is encrypted ({info.filename!r} needs a password); unpack it yourself and re-pack "
                    "it without a password, as a plain zip or tar.gz."
                )
            if info.compress_type not in ZIP_METHODS:
                raise DownloadError(
                    f"{source} uses a zip compression Python cannot read (method {info.compress_type} for "
                    f"{info.filename!r}); unpack it with another tool and re-pack it as a plain zip or tar.gz."
                )
        for info in infos:
            budget.entry(0)
            with _writing(info.filename, source):
                target = _prepare(into, _safe_parts(info.filename, source), _zip_dir(info))
                if target is not None:
                    with _decoding(source):
                        src = zf.open(info)  # reads the member's own header
                    with src:
                        budget.copy(src, target)


def _end_seen() -> type[tarfile.TarInfo]:
    """A TarInfo class that records whether the last header block tarfile read was the end-of-archive marker (a
    block of zeros): tarfile also stops, silently, at a header cut short or garbled past the first member."""

    class Recording(tarfile.TarInfo):
        end_marker = False

        @classmethod
        def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
            cls.end_marker = len(buf) == tarfile.BLOCKSIZE and buf.count(0) == len(buf)
            return super().frombuf(buf, encoding, errors)

    return Recording


def _check_tar_end(tf: tarfile.TarFile, info: type[tarfile.TarInfo], budget: _Budget, source: str) -> None:
    """Refuse a tar that stops without its end-of-archive marker, and read a compressed one to the end of its stream,
    so that gzip's CRC and length and the end-of-stream checks of bzip2 and xz run."""
    if not getattr(info, "end_marker", False):
        last = f" after {tf.members[-1].name!r}" if tf.members else ""
        raise DownloadError(f"{source} is truncated or corrupt (no end-of-archive marker{last}); fetch it again.")
    if tf.fileobj is None:
        return
    while chunk := _read(tf.fileobj, source):  # the padding after the marker, usually a few kB of zeros
        budget.check(len(chunk), 0)
        budget.bytes += len(chunk)


def _extract_tar(archive: Path, mode: str, into: Path, budget: _Budget, source: str) -> None:
    info = _end_seen()
    with _decoding(source):
        opened = tarfile.open(archive, mode, tarinfo=info)  # noqa: SIM115 (closed by the `with` below)
    paths = _Paths(source)
    with opened as tf:
        while True:  # streams: one decompression pass
            with _decoding(source):
                member = tf.next()
            if member is None:
                break
            parts = _safe_parts(member.name, source)
            if not (member.isfile() or member.isdir()):
                _refuse_special(member.name, source)
            budget.entry(member.size if member.isfile() else 0)  # folders and skipped entries count too
            paths.add(member.name, parts, member.isdir())
            with _writing(member.name, source):
                target = _prepare(into, parts, member.isdir())
                if target is None:
                    continue
                src = tf.extractfile(member)
                assert src is not None  # regular files always have a data stream
                with src:
                    budget.copy(src, target)
        _check_tar_end(tf, info, budget, source)


def _archive_kind(archive: Path, source: str) -> str:
    """How to read `archive`, from its first bytes alone: "zip", or the tarfile mode (a tar whose last member is a
    zip is still a tar). Refuses a file that is no archive (a web page, an error text) before any scan."""
    with open(archive, "rb") as f:
        head = f.read(512)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    for magic, mode in TAR_MAGIC.items():
        if head.startswith(magic):
            return mode
    if head[257:262] == b"ustar":
        return "r:"
    start = repr(head[:20]) if head else "an empty file"
    raise DownloadError(
        f"{source} is not a zip or tar archive (it starts with {start}); check the --url or --archive, "
        "or fetch the file again."
    )


def find_root(folder: Path, source: str) -> Path:
    """The shallowest folder under `folder` holding image/ and mask/ (archives often nest them)."""
    level = [folder]
    while level:
        for candidate in level:
            if (candidate / IMAGE_DIR).is_dir() and (candidate / MASK_DIR).is_dir():
                return candidate
        level = sorted(c for f in level for c in f.iterdir() if c.is_dir() and not c.name.startswith("."))
    top = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
    raise DownloadError(
        f"{source} holds no image/ and mask/ folders (top level: {top}); is it the chest-segmentation-image dataset?"
    )


def extract_dataset(archive: Path, into: Path, settings: DownloadSettings, source: str) -> Path:
    """Unpack `archive` into the empty folder `into` and return the folder holding image/ and mask/.

    Refuses absolute paths, `..`, links and device files, and stops at the size and file-count limits.

    Raises:
        DownloadError: the archive is unsafe, too large, corrupt or holds no dataset.
    """
    kind = _archive_kind(archive, source)
    budget = _Budget(settings, source, archive.stat().st_size)
    if kind != "zip":
        _extract_tar(archive, kind, into, budget, source)
    elif zipfile.is_zipfile(archive):
        _extract_zip(archive, into, budget, source)
    else:
        raise DownloadError(f"{source} is not a readable zip or tar archive (truncated or corrupt?); get it again.")
    return find_root(into, source)
