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
