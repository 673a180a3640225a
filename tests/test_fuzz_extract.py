"""Property test: unpacking an archive with random member names, types and sizes ends in an installed dataset or a
typed error, quickly, and writes nothing outside the destination."""

from __future__ import annotations

import io
import stat
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import strategies as st

from cxrseg.config import DownloadSettings
from cxrseg.download import download_dataset
from cxrseg.errors import CxrsegError
from tests.test_download import dataset_files
from tests.test_fuzz_decode import BUDGETS, run_property

ESCAPE = Path(tempfile.gettempdir()) / "cxrseg-fuzz-escape"  # where absolute member names point
KINDS = ["file", "file", "dir", "symlink", "hardlink", "chr", "blk", "fifo"]
TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
ZIP_MODES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "hardlink": stat.S_IFREG}
ZIP_MODES |= {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}

segments = st.one_of(
    st.sampled_from(["..", ".", "", "image", "mask", "test_image", "__MACOSX", "a.png", "0.png", "C:", "~"]),
    st.text(st.characters(blacklist_characters="/\\\0", blacklist_categories=("Cs",)), min_size=1, max_size=20),
)


@st.composite
def member_names(draw: st.DrawFn) -> str:
    """Relative, absolute (pointing at ESCAPE), drive-letter or backslash names made of odd segments; three `..`
    lead from the unpacking folder (DEST's parent/.DEST.tmp-*/unpacked) to the folder the test watches."""
    parts = draw(st.lists(segments, min_size=1, max_size=4))
    separator = draw(st.sampled_from(["/", "/", "\\"]))
    name = separator.join(parts)
    unsafe = [f"{ESCAPE}/", "C:\\", "/", "../", "../../../", "a/../../../../"]
    prefix = draw(st.sampled_from([""] * len(unsafe) + unsafe))
    return prefix + name + draw(st.sampled_from(["", "", "/"]))


members = st.lists(st.tuples(member_names(), st.sampled_from(KINDS), st.integers(0, 3000), member_names()), max_size=5)
cases = st.fixed_dictionaries(
    {
        "pack": st.sampled_from(["zip", "tar", "tar.gz"]),
        "with_dataset": st.booleans(),
        "odd_first": st.booleans(),  # the odd members before the dataset's, or after it
        "members": members,
        "cut": st.none() | st.floats(0, 1),
        "max_bytes": st.sampled_from([2_000, 200_000, 10**9]),
        "max_files": st.sampled_from([3, 50, 10_000]),
    }
)


def _zip(files: dict[str, bytes], extra: list[tuple[str, str, int, str]], odd_first: bool) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items() if not odd_first else ():
            zf.writestr(name, data)
        for name, kind, size, link in extra:
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (ZIP_MODES[kind] | 0o644) << 16
            zf.writestr(info, link.encode() if kind in ("symlink", "hardlink") else bytes(size))
        for name, data in files.items() if odd_first else ():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar(files: dict[str, bytes], extra: list[tuple[str, str, int, str]], odd_first: bool, compress: bool) -> bytes:
    infos = []
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        infos.append((info, data))
    for name, kind, size, link in extra:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = TAR_TYPES[kind], link
        info.size = size if kind == "file" else 0
        infos.insert(len(infos) if not odd_first else 0, (info, bytes(info.size)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tf:
        for info, data in infos:
            tf.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def _pack(case: dict) -> bytes:
    files = dataset_files() if case["with_dataset"] else {}
    if case["pack"] == "zip":
        data = _zip(files, case["members"], case["odd_first"])
    else:
        data = _tar(files, case["members"], case["odd_first"], compress=case["pack"] == "tar.gz")
    return data if case["cut"] is None else data[: int(len(data) * case["cut"])]


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (links not followed) with the bytes of its regular files."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
        for p in folder.rglob("*")
    }


def _unpack_one(case: dict) -> None:
    try:
        data = _pack(case)
    except (ValueError, UnicodeError, OverflowError):
        return  # a name no writer can store: nothing to unpack
    with tempfile.TemporaryDirectory() as folder:
        outer = Path(folder)
        archive, dest = outer / "src" / f"ds.{case['pack']}", outer / "data" / "lungs"
        archive.parent.mkdir()
        archive.write_bytes(data)
        dest.parent.mkdir()  # download_dataset creates it; it may stay, empty, after a failure
        before = _tree(outer)
        settings = DownloadSettings(max_extract_bytes=case["max_bytes"], max_extract_files=case["max_files"])
        start = time.monotonic()
        try:
            result = download_dataset(settings, dest, archive=archive)
        except CxrsegError as exc:
            assert "\n" not in str(exc) and not dest.exists()
        else:
            assert result.counts["image"] == 3 and (dest / "image" / "0.png").is_file()
        assert time.monotonic() - start < 5.0
        after = {path: content for path, content in _tree(outer).items() if not path.startswith("data/lungs")}
        assert after == before  # nothing beside the dataset
        assert not ESCAPE.exists()


@pytest.mark.parametrize("budget", BUDGETS)
def test_unpacking_ends_in_a_dataset_or_a_typed_error_and_stays_inside(budget: int) -> None:
    run_property(budget, cases, _unpack_one)


def test_a_zip_member_with_an_empty_name_is_skipped_not_a_crash() -> None:
    case = {"pack": "zip", "with_dataset": False, "odd_first": False, "members": [("", "file", 0, "..")]}
    _unpack_one({**case, "cut": None, "max_bytes": 2000, "max_files": 3})  # found by the fuzzer: an IndexError
    _unpack_one({**case, "with_dataset": True, "cut": None, "max_bytes": 10**6, "max_files": 100})
