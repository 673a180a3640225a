"""Atomic writes leave no partial file and give outputs the usual permissions."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from cxrseg.errors import OutputError
from cxrseg.files import atomic_path, write_text


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.csv", "x\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.csv").stat().st_mode)
    assert mode & stat.S_IROTH  # not mkstemp's 0600


def test_failure_leaves_neither_target_nor_temporary(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "keep.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_item9_a_folder_as_output_file_is_one_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a folder"):
        write_text(tmp_path, "x")


def test_item2_full_disk_is_one_output_error_and_keeps_the_old_file(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("old")
    full = r"keep.txt: No space left on device \(ENOSPC\); free some space"
    with pytest.raises(OutputError, match=full), atomic_path(tmp_path / "keep.txt") as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "old"


def test_item2_output_below_a_file_is_one_output_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile/sub/t.csv: Not a directory"):
        write_text(tmp_path / "afile" / "sub" / "t.csv", "x")


def test_a_legal_name_of_243_bytes_is_written_and_leaves_no_temporary(tmp_path: Path) -> None:
    """The temporary `.NAME.XXXXXXXX.tmp` added 14 bytes, so a legal 243-byte name (NAME_MAX is
    255) failed with ENAMETOOLONG; a long name now gets a short hashed temporary name."""
    for length in (241, 243, 255):
        path = tmp_path / ("a" * (length - 4) + ".png")
        write_text(path, "x")
        assert path.read_text() == "x"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_name_too_long_for_the_file_system_says_to_shorten_it(tmp_path: Path) -> None:
    """A name over 255 bytes gets advice about the name, not only "choose another output path"."""
    with pytest.raises(OutputError, match="shorter output name"):
        write_text(tmp_path / ("a" * 256), "x")
