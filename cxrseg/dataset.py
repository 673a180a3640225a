"""The dataset on disk: its folder layout, image/mask pairs, splits and the decoded in-memory set."""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cxrseg.errors import DataError
from cxrseg.imaging import IMAGE_SUFFIXES, image_size, read_image, read_mask
from cxrseg.preprocess import Geometry, fit_film, fit_to_square, valid_region

Split = Literal["train", "val", "test", "all"]
SplitRule = Literal["name", "shuffle"]  # how image/ is split into train and val (see split_train_val)
IMAGE_DIR, MASK_DIR = "image", "mask"  # training pairs
MIN_TRAIN_PAIRS, MIN_VAL_PAIRS = 2, 1  # per training process
TRAINING_NEEDS = (
    f"training needs {MIN_TRAIN_PAIRS + MIN_VAL_PAIRS} pairs or more: {MIN_TRAIN_PAIRS} to train on and "
    f"{MIN_VAL_PAIRS} to validate"
)
TEST_IMAGE_DIR, TEST_MASK_DIR = "test_image", "test_mask"  # the held-out split, when the dataset has one
IGNORE_DIR = "ignore"  # optional: per training film, pixels (white) the loss leaves out
LAYOUT = (IMAGE_DIR, MASK_DIR, TEST_IMAGE_DIR, TEST_MASK_DIR)
MAX_LISTED = 10


@dataclass(frozen=True)
class Pair:
    """An X-ray and its lung mask, matched by file stem; `ignore` marks pixels the training loss leaves out."""

    image: Path
    mask: Path
    ignore: Path | None = None

    @property
    def name(self) -> str:
        return self.image.stem


def listing(paths: Sequence[object], what: str) -> str:
    shown = ", ".join(str(p) for p in paths[:MAX_LISTED])
    more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
    return f"{len(paths)} {what}: {shown}{more}"


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files skipped)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _by_stem(files: list[Path], folder: Path, strip: str = "") -> dict[str, Path]:
    stems: dict[str, Path] = {}
    clashes = []
    for path in files:
        stem = path.stem[: -len(strip)] if strip and path.stem.endswith(strip) else path.stem
        if stem in stems:
            clashes.append(f"{stems[stem].name}/{path.name}")
        stems[stem] = path
    if clashes:
        raise DataError(f"{folder}: " + listing(clashes, "file names share a stem") + "; keep one of each.")
    return stems


def find_pairs(image_dir: Path, mask_dir: Path) -> list[Pair]:
    """Pair images and masks by stem whatever their extensions (image/X.png with mask/X.jpeg).

    A mask may also be named X_mask.*. Raises DataError listing every unpaired file.
    """
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"Folder {folder} not found; point --data at a folder with image/ and mask/.")
    images = _by_stem(list_images(image_dir), image_dir)
    masks = _by_stem(list_images(mask_dir), mask_dir, strip="_mask")
    lonely_images = [images[s] for s in sorted(images.keys() - masks.keys())]
    lonely_masks = [masks[s] for s in sorted(masks.keys() - images.keys())]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(listing(lonely_images, f"images without a mask in {mask_dir}"))
        if lonely_masks:
            parts.append(listing(lonely_masks, f"masks without an image in {image_dir}"))
        raise DataError("; ".join(parts) + ". Pairs are matched by file name stem; add or remove files.")
    if not images:
        raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}.")
    return [Pair(images[s], masks[s]) for s in sorted(images)]


def attach_ignores(pairs: list[Pair], ignore_dir: Path) -> list[Pair]:
    """The pairs with their ignore masks from `ignore_dir` (matched by stem like masks; any film may have none).

    Raises DataError listing ignore masks whose stem names no pair: a misnamed file would silently be unused.
    """
    if not ignore_dir.is_dir():
        return pairs
    ignores = _by_stem(list_images(ignore_dir), ignore_dir, strip="_mask")
    stray = [ignores[s] for s in sorted(ignores.keys() - {pair.name for pair in pairs})]
    if stray:
        raise DataError(
            listing(stray, f"ignore masks without a training image in {ignore_dir.parent / IMAGE_DIR}")
            + "; ignore/ holds masks for image/ films only, matched by file name stem; rename or remove them."
        )
    return [Pair(p.image, p.mask, ignores.get(p.name)) for p in pairs]


def _name_bytes(name: str) -> bytes:
    """A file name as bytes for hashing: one Unicode spelling (NFC, as macOS may write NFD), and the raw bytes of
    a name that is not valid UTF-8 (os.listdir's surrogate escapes)."""
    return unicodedata.normalize("NFC", name).encode("utf-8", "surrogateescape")


def _unit(seed: int, name: str) -> float:
    """A number in [0, 1) fixed by the seed and the file name alone (the first 8 bytes of a SHA-256)."""
    digest = hashlib.sha256(str(seed).encode() + b"\0" + _name_bytes(name)).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def film_key(name: str) -> str:
    """A short fingerprint of a film's file name (stem), as checkpoints record the films they were fitted on
    (CheckpointInfo.trained_on): 8 hex digits of its SHA-256, so a chance match is one in four billion."""
    return hashlib.sha256(_name_bytes(name)).hexdigest()[:8]


def unseen(pairs: Sequence[Pair], trained_on: Collection[str]) -> tuple[list[Pair], list[Pair]]:
    """(pairs whose film a checkpoint was not fitted on, those it was), by film_key."""
    fresh = [pair for pair in pairs if film_key(pair.name) not in trained_on]
    return fresh, [pair for pair in pairs if film_key(pair.name) in trained_on]


def _val_count(n: int, val_fraction: float) -> int:
    return max(MIN_VAL_PAIRS, min(n - MIN_TRAIN_PAIRS, round(n * val_fraction)))


def split_train_val(pairs: Sequence[Pair], val_fraction: float, seed: int, rule: SplitRule) -> tuple[list, list]:
    """(train, val) of a folder's image/ pairs, each sorted by name.

    `name` (the default): a pair is `val` when a seeded hash of its file name falls below `val_fraction`, so
    its side depends on its own name and the seed alone: adding or removing pairs never moves a pair the
    model was trained on into `val`, and the same film under the same name falls on the same side in every
    folder. The share is `val_fraction` on average; a folder where the hash leaves no `val` pair, or fewer
    than MIN_TRAIN_PAIRS to train on, takes the pairs nearest the threshold across.
    `shuffle`, the rule of checkpoints that record none (made before the rule was a setting): the sorted pairs
    shuffled by the seed, the first round(n x val_fraction) in `val`; adding or removing a pair reshuffles them.
    """
    if rule == "shuffle":
        order = list(pairs)
        random.Random(seed).shuffle(order)
        n_val = _val_count(len(order), val_fraction)
    else:
        order = sorted(pairs, key=lambda p: _unit(seed, p.name))
        below = sum(_unit(seed, p.name) < val_fraction for p in order)
        n_val = max(MIN_VAL_PAIRS, min(len(order) - MIN_TRAIN_PAIRS, below))
    return sorted(order[n_val:], key=lambda p: p.name), sorted(order[:n_val], key=lambda p: p.name)


def dataset_splits(
    root: Path,
    val_fraction: float = 0.1,
    seed: int = 0,
    with_ignores: bool = False,
    *,
    rule: SplitRule = "name",
    with_test: bool = True,
) -> dict[str, list[Pair]]:
    """The three splits of a dataset folder.

    `train` and `val` are a seeded split of image/+mask/ by `rule` (see split_train_val: about `val_fraction`
    of it, at least one pair, and never fewer than MIN_TRAIN_PAIRS left to train on when there are enough);
    `test` is test_image/+test_mask/ when present, else empty. Training passes `with_test=False`: it never
    lists the test folders, so nothing there (missing masks, a stray file) can stop it.
    With `with_ignores` (training), pairs of image/ carry their ignore/ mask when the folder has one (see
    attach_ignores); scoring never reads ignore/.
    """
    if not root.is_dir():
        raise DataError(
            f"Dataset folder {root} not found; pass --data DIR, set CXRSEG_DATA__ROOT, or run `cxrseg download`."
        )
    pairs = find_pairs(root / IMAGE_DIR, root / MASK_DIR)
    if with_ignores:
        pairs = attach_ignores(pairs, root / IGNORE_DIR)
    if len(pairs) < 2:
        raise DataError(f"{root / IMAGE_DIR}: {count_pairs(len(pairs))} found; {TRAINING_NEEDS}; add pairs.")
    train, val = split_train_val(pairs, val_fraction, seed, rule)
    has_test = with_test and ((root / TEST_IMAGE_DIR).is_dir() or (root / TEST_MASK_DIR).is_dir())
    return {
        "train": train,
        "val": val,
        "test": find_pairs(root / TEST_IMAGE_DIR, root / TEST_MASK_DIR) if has_test else [],
    }


def count_pairs(n: int) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def default_split(root: Path) -> Split:
    """What `cxrseg evaluate` scores by default: `test` when the folder has test_image/, else `val`."""
    return "test" if (root / TEST_IMAGE_DIR).is_dir() else "val"


def select_pairs(
    root: Path, split: Split, val_fraction: float = 0.1, seed: int = 0, *, rule: SplitRule = "name"
) -> list[Pair]:
    """Pairs of one split, `train` and `val` by the split rule of the checkpoint being scored. `all` is every
    pair of image/+mask/ and test_image/+test_mask/, whichever the folder has (one pair is enough); `test`
    needs only test_image/+test_mask/: a held-out set is scored without the training folders beside it."""
    if split == "test" and (root / TEST_IMAGE_DIR).is_dir():
        return find_pairs(root / TEST_IMAGE_DIR, root / TEST_MASK_DIR)
    if split == "all":
        sides = [(IMAGE_DIR, MASK_DIR), (TEST_IMAGE_DIR, TEST_MASK_DIR)]
        present = [(root / i, root / m) for i, m in sides if (root / i).is_dir() or (root / m).is_dir()]
        if not root.is_dir() or not present:
            dataset_splits(root, val_fraction, seed, rule=rule)  # raises the message naming what is missing
        return sorted((pair for i, m in present for pair in find_pairs(i, m)), key=lambda p: p.name)
    splits = dataset_splits(root, val_fraction, seed, rule=rule)
    if split == "test" and not splits["test"]:
        raise DataError(f"{root} has no {TEST_IMAGE_DIR}/ and {TEST_MASK_DIR}/; use --split val, train or all.")
    return splits[split]


def check_sizes(pairs: Sequence[Pair]) -> None:
    """Raise DataError listing every unreadable file and every pair whose image, mask (and ignore) sizes differ."""
    bad = []
    for pair in pairs:
        try:
            image, mask = image_size(pair.image), image_size(pair.mask)
            ignore = image_size(pair.ignore) if pair.ignore else image
        except DataError as exc:
            bad.append(str(exc).split(";")[0])
            continue
        if image != mask:
            bad.append(f"{pair.image.name} {image} vs {pair.mask.name} {mask}")
        if image != ignore:
            bad.append(f"{pair.image.name} {image} vs {IGNORE_DIR}/{pair.ignore.name} {ignore}")
    if bad:
        raise DataError(
            listing(bad, "pairs are unreadable or differ in size (height, width)") + "; fix or remove them."
        )


@dataclass
class CachedSet:
    """A decoded, resized dataset held in memory: what one epoch iterates over."""

    images: torch.Tensor  # (N, 1, S, S) float32 in [0, 1], zero padding
    masks: torch.Tensor  # (N, 1, S, S) float32 in {0, 1}
    valid: torch.Tensor  # (N, 1, S, S) float32, 1 inside the image
    geometries: list[Geometry]
    pairs: list[Pair]
    ignored: torch.Tensor | None = None  # (N, 1, S, S) float32, 1 where an ignore mask leaves pixels out of the loss


def load_pairs(
    pairs: Sequence[Pair],
    size: int,
    workers: int = 4,
    on_item: Callable[[], None] | None = None,
    *,
    trim: bool = False,
) -> CachedSet:
    """Decode every pair once (threads; Pillow releases the GIL) and resize to the model size; with `trim`, each
    image's uniform margins are cropped off first (cxrseg.preprocess.fit_film), its masks cropped alike."""
    check_sizes(pairs)

    def load(pair: Pair) -> tuple[np.ndarray, np.ndarray, Geometry, np.ndarray | None]:
        image, geometry = fit_film(read_image(pair.image), size, trim)
        mask, _ = fit_to_square(read_mask(pair.mask).astype(np.float32), size, geometry.content)
        ignored = None
        if pair.ignore:  # any model pixel touched by an ignored pixel is left out
            touched, _ = fit_to_square(read_mask(pair.ignore).astype(np.float32), size, geometry.content)
            ignored = (touched > 0).astype(np.float32)
        if on_item:
            on_item()
        return image, (mask > 0.5).astype(np.float32), geometry, ignored

    if not pairs:
        raise DataError("No image/mask pairs to load; check the dataset folder.")

    def attempt(pair: Pair) -> tuple[np.ndarray, np.ndarray, Geometry, np.ndarray | None] | str:
        try:
            return load(pair)
        except DataError as exc:
            return str(exc)

    with ThreadPoolExecutor(workers) as pool:
        loaded = list(pool.map(attempt, pairs))
    failed = [item for item in loaded if isinstance(item, str)]
    if failed:
        message = listing(failed, "files could not be read")
        raise DataError(message if message.endswith(".") else message + ".")
    geometries = [g for _, _, g, _ in loaded]
    ignored = None
    if any(i is not None for *_, i in loaded):
        none = np.zeros((size, size), dtype=np.float32)
        ignored = torch.from_numpy(np.stack([none if i is None else i for *_, i in loaded]))[:, None]
    return CachedSet(
        images=torch.from_numpy(np.stack([i for i, _, _, _ in loaded]))[:, None],
        masks=torch.from_numpy(np.stack([m for _, m, _, _ in loaded]))[:, None],
        valid=torch.from_numpy(np.stack([valid_region(g) for g in geometries]))[:, None],
        geometries=geometries,
        pairs=list(pairs),
        ignored=ignored,
    )
