"""X-ray inputs: expanding files, folders and globs into jobs with unique output names, and checking --out."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxrseg.dicom import DICOM_SUFFIXES, has_dicom_preamble, is_dicomdir
from cxrseg.errors import DataError, InputPathError
from cxrseg.imaging import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Job:
    """One input file and the base of its output names, relative to the output folder (POSIX)."""

    source: Path
    name: str  # e.g. "sub/a.png": outputs are sub/a.png.mask.png, sub/a.png.overlay.jpg
    error: str = ""  # set when the input does not exist


@dataclass
class Plan:
    """What a list of INPUT arguments expands to, in argument order, files sorted within each."""

    jobs: list[Job] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)  # folders that were listed
    trees: list[Path] = field(default_factory=list)  # folders a `**` pattern walks through, subfolders included
    ignored: list[Path] = field(default_factory=list)  # files in those folders that are not X-rays
    _taken: set[str] = field(default_factory=set)
    _seen: set[Path] = field(default_factory=set)

    def add(self, path: Path, base: Path) -> None:
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop: one error row, the run goes on
            self.jobs.append(Job(path, "", f"{path}: cannot be read ({exc}); remove this link."))
            return
        if resolved in self._seen:
            return  # the same file reached twice (a folder and a file in it): one row
        self._seen.add(resolved)
        relative = path.relative_to(base)
        name, number = (relative if ".." not in relative.parts else Path(path.name)).as_posix(), 1
        while (name if number == 1 else f"{name}-{number}").casefold() in self._taken:
            number += 1  # a.png from two input folders: the second becomes a.png-2.*
        name = name if number == 1 else f"{name}-{number}"
        self._taken.add(name.casefold())
        self.jobs.append(Job(path, name))

    def add_folder(self, folder: Path, base: Path, recursive: bool) -> None:
        self.folders.append(folder)

        def unreadable(error: OSError) -> None:
            message = f"{error.filename}: cannot list this folder ({error.strerror}); check its permissions."
            self.jobs.append(Job(Path(error.filename or folder), "", message))

        for root, dirs, files in os.walk(folder, onerror=unreadable):
            self.ignored.extend(Path(root) / d for d in sorted(dirs) if recursive and d.startswith("."))
            dirs[:] = sorted(d for d in dirs if recursive and not d.startswith("."))
            for file_name in sorted(files):
                path = Path(root) / file_name
                if is_candidate(path):
                    self.add(path, base)
                else:
                    self.ignored.append(path)


def is_candidate(path: Path) -> bool:
    """A file in an input folder is an input when its suffix is an image/DICOM one or it has the DICM preamble;
    a DICOM CD export's DICOMDIR (its index, no picture) is not."""
    if path.name.startswith(".") or is_dicomdir(path):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES or has_dicom_preamble(path)


def _static_base(pattern: str) -> Path:
    parts = []
    for part in Path(pattern).parts:
        if any(char in part for char in "*?["):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _part_matches(pattern: str, name: str) -> bool:
    """One path part against one pattern part; like glob, wildcards skip hidden names."""
    return (pattern.startswith(".") or not name.startswith(".")) and fnmatch.fnmatchcase(name, pattern)


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...], prefix: bool) -> bool:
    """True when `parts` match `pattern` (with `prefix`, when some longer path below them could)."""
    if not parts:
        return prefix or all(p == "**" for p in pattern)
    if not pattern:
        return False
    if pattern[0] == "**":
        below = not parts[0].startswith(".") and _matches(pattern, parts[1:], prefix)
        return below or _matches(pattern[1:], parts, prefix)
    return _part_matches(pattern[0], parts[0]) and _matches(pattern[1:], parts[1:], prefix)


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link to itself (ELOOP): planned as a file, it becomes an error row
        return False


def iter_pattern(pattern: str) -> Iterator[Path]:
    """Matches of a glob pattern, unordered. Links to folders are followed, but each folder is listed once (by
    device and inode), so a link to `..` or to itself ends the walk instead of repeating it until the kernel
    refuses (2**40 paths for two such links, with glob.glob)."""
    if "**" not in pattern:
        yield from (Path(m) for m in glob.iglob(pattern))
        return
    base = _static_base(pattern)
    rest = Path(pattern).parts[len(base.parts) :]
    if _matches(rest, (), False):
        yield base
    seen: set[tuple[int, int]] = set()
    pending: list[tuple[Path, tuple[str, ...]]] = [(base, ())]
    while pending:
        folder, parts = pending.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                children = [(entry.name, _is_folder(entry)) for entry in entries]
        except OSError:
            continue  # unreadable or gone: glob.glob skips it too
        for name, is_dir in children:
            path, below = folder / name, (*parts, name)
            if _matches(rest, below, False):
                yield path
            if is_dir and _matches(rest, below, True):
                pending.append((path, below))


def pattern_trees(inputs: Sequence[str | Path]) -> list[Path]:
    """The folders that `**` patterns among `inputs` walk (with their subfolders): --out must stay outside."""
    return [_static_base(str(raw)) for raw in inputs if "**" in str(raw) and not Path(raw).exists()]


def plan_inputs(inputs: Sequence[str | Path], recursive: bool = False) -> Plan:
    """Expand files, folders (subfolders with `recursive`) and glob patterns into jobs with unique names.

    Output names mirror each input folder's tree (a glob's tree below its first wildcard-free folders;
    a file's name alone). An input that does not exist becomes a job with `error` set, never a silent skip.
    """
    plan = Plan()
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if path.is_dir():
            plan.add_folder(path, path, recursive)
        elif path.is_file():
            plan.add(path, path.parent)
        elif any(char in text for char in "*?["):
            base = _static_base(text)
            matches = sorted(iter_pattern(text))
            plan.trees.extend(pattern_trees([text]))
            if not matches:
                plan.jobs.append(Job(path, "", f"{text}: no file matches this pattern."))
            for match in matches:
                if match.is_dir():
                    plan.add_folder(match, base, recursive)
                elif is_dicomdir(match):  # 'cd/*' matches the export's index too: not an X-ray
                    plan.ignored.append(match)
                else:  # files, and links or FIFOs that become error rows as in a listed folder
                    plan.add(match, base)
        else:
            plan.jobs.append(Job(path, "", f"{text}: no such file or folder; check the INPUT path."))
    if not plan.jobs:
        where = ", ".join(str(i) for i in inputs) or "(no INPUT given)"
        raise DataError(
            f"No X-rays found in {where} ({', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)} or DICOM files); "
            "pass files, folders (--recursive for subfolders) or --sample."
        )
    return plan


OUT_HINT = "choose an --out folder outside the inputs, e.g. a sibling 'predictions' folder"


def missing_inputs(inputs: Sequence[str | Path]) -> list[str]:
    """The inputs that name nothing: no such file or folder, or a glob pattern that matches nothing."""
    missing = []
    for raw in inputs:
        text = str(raw)
        if Path(text).exists():
            continue
        if any(char in text for char in "*?[") and next(iter_pattern(text), None) is not None:
            continue
        missing.append(text)
    return missing


def check_out_folder(out_dir: Path, folders: Sequence[Path], recursive: bool) -> None:
    """Refuse an output folder that is a file, an input folder, or inside a recursively listed one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputPathError(f"--out {out_dir} is a file; pass a folder for the predictions.")
    out = out_dir.resolve()
    for folder in folders:
        resolved = folder.resolve()
        if out == resolved or (recursive and resolved in out.parents):
            raise InputPathError(f"--out {out_dir} is the input folder {folder} or inside it; {OUT_HINT}.")


def check_output(out_dir: Path, plan: Plan, recursive: bool) -> None:
    """Refuse an output folder that is an input folder, lies in a recursively listed one, or holds inputs:
    directly (predictions.csv beside the X-rays a glob picked) or in a folder its masks go to."""
    check_out_folder(out_dir, plan.folders, recursive)
    check_out_folder(out_dir, plan.trees, recursive=True)
    out = out_dir.resolve()
    input_dirs = {job.source.resolve().parent for job in plan.jobs if not job.error}
    output_dirs = {out} | {(out / job.name).parent for job in plan.jobs if not job.error}
    clash = sorted(input_dirs & output_dirs)
    if clash:
        raise InputPathError(f"--out {out_dir} would write next to input X-rays in {clash[0]}; {OUT_HINT}.")
