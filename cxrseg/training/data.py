"""What training reads: each dataset folder's train and validation pairs, decoded once; never its test pairs."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxrseg.config import Settings
from cxrseg.dataset import (
    MIN_TRAIN_PAIRS,
    MIN_VAL_PAIRS,
    TRAINING_NEEDS,
    CachedSet,
    Pair,
    count_pairs,
    dataset_splits,
    film_key,
    listing,
    load_pairs,
    unseen,
)
from cxrseg.errors import ConfigError, DataError
from cxrseg.imaging import read_mask

FEW_VALIDATION_IMAGES = 10


@dataclass
class TrainingData:
    """Training pairs of every folder, and this rank's shard of the validation pairs with their folder."""

    train: CachedSet
    val: CachedSet
    truths: list[np.ndarray]  # full-resolution validation masks
    val_folder: list[int]  # index into `folders` of each validation pair
    folders: list[Path]
    n_val: int  # over all ranks
    trained_on: frozenset[str]  # film_key of every train film, and of the films the starting checkpoint learnt


def split_folders(
    settings: Settings, learnt: Collection[str] = frozenset()
) -> tuple[list[Pair], list[tuple[int, Pair]], list[Pair]]:
    """Train pairs of all folders, (folder index, pair) for validation, and the validation pairs moved to training
    because their film was learnt: by the starting checkpoint (`learnt`, film keys) or, under the same name, from
    another folder's `train`. Each folder keeps its own split."""
    seen: dict[Path, Path] = {}
    for root in settings.data.root:  # the same films twice would count twice in training and in validation
        if root.resolve() in seen:
            raise ConfigError(f"--data {root} is the same folder as --data {seen[root.resolve()]}; give each once.")
        seen[root.resolve()] = root
    data = settings.data
    splits = [
        dataset_splits(
            root, data.val_fraction, data.split_seed, with_ignores=True, rule=data.split_rule, with_test=False
        )
        for root in data.root
    ]
    known = frozenset(learnt) | {film_key(pair.name) for split in splits for pair in split["train"]}
    train: list[Pair] = []
    val: list[tuple[int, Pair]] = []
    moved: list[Pair] = []
    for index, split in enumerate(splits):
        fresh, learnt_here = unseen(split["val"], known)
        train += sorted(split["train"] + learnt_here, key=lambda p: p.name)
        val += [(index, pair) for pair in fresh]
        moved += learnt_here
    return train, val, moved


def count_films(n: int) -> str:
    return f"{n} film" if n == 1 else f"{n} films"


def names_in_several_folders(pairs: list[Pair]) -> list[str]:
    """File names (stems) found in more than one dataset folder, sorted."""
    folders: dict[str, set[Path]] = {}
    for pair in pairs:
        folders.setdefault(pair.name, set()).add(pair.image.parent.parent)
    return sorted(name for name, where in folders.items() if len(where) > 1)


ALL_LUNG = 0.9  # a mask holding more of its film than this is not a lung mask (train masks: at most 0.43)


def odd_masks(cached: CachedSet) -> list[str]:
    """Names of the masks with no lung at all, or lung over more than ALL_LUNG of their film (an inverted or
    wrong file): training on them teaches the model to miss or to flood the lungs."""
    share = (cached.masks * cached.valid).flatten(1).sum(1) / cached.valid.flatten(1).sum(1).clamp(min=1)
    return [pair.mask.name for pair, s in zip(cached.pairs, share.tolist(), strict=True) if s == 0 or s > ALL_LUNG]


def load_training_data(
    settings: Settings,
    rank: int = 0,
    world_size: int = 1,
    on_status: Callable[[str], None] | None = None,
    learnt: Collection[str] = frozenset(),
) -> TrainingData:
    """Decode the train pairs and this rank's validation shard at the model size; `learnt` holds the film keys
    the starting checkpoint was fitted on, which are never validated on."""
    train_pairs, val_items, moved = split_folders(settings, learnt)
    folders = list(settings.data.root)
    where = ", ".join(str(f) for f in folders)
    if len(val_items) < MIN_VAL_PAIRS * world_size or len(train_pairs) < MIN_TRAIN_PAIRS * world_size:
        each = f" for each of {world_size} processes" if world_size > 1 else ""
        fix = "add pairs" if len(val_items) >= MIN_VAL_PAIRS * world_size else "add pairs or raise data.val_fraction"
        if moved and len(val_items) < MIN_VAL_PAIRS * world_size:
            fix = (
                f"{count_films(len(moved))} moved from validation to training because the --init-from checkpoint "
                "(or another --data folder) already learnt them; add films it never saw to validate on"
            )
        raise DataError(
            f"{where}: {count_pairs(len(train_pairs) + len(val_items))} ({len(train_pairs)} to train on, "
            f"{len(val_items)} to validate); {TRAINING_NEEDS}{each}; {fix}."
        )
    if on_status and moved:
        what = "validation films moved to training" if len(moved) > 1 else "validation film moved to training"
        on_status(
            f"{listing([pair.name for pair in moved], what)}: the --init-from checkpoint, or another --data "
            "folder's training films under the same name, already hold them, so scoring them would flatter the "
            "model."
        )
    if on_status:
        shared = names_in_several_folders(train_pairs + [pair for _, pair in val_items])
        if shared:
            on_status(
                f"Warning: {listing(shared, 'file names are in more than one --data folder')}; if they are the same "
                "films, they count twice in training and in validation; remove the copies."
            )
        size = settings.preprocess.image_size
        ignored = sum(pair.ignore is not None for pair in train_pairs)
        with_ignore = f" ({ignored} train films with an ignore mask)" if ignored else ""
        on_status(f"Decoding {len(train_pairs)} train and {len(val_items)} validation pairs at {size}px{with_ignore}")
        unused = sum(pair.ignore is not None for _, pair in val_items)
        if unused:
            on_status(
                f"Note: {unused} ignore masks belong to validation films and are not used: validation scores the "
                "whole expert mask."
            )
        if len(val_items) < FEW_VALIDATION_IMAGES:
            on_status(
                f"Warning: only {len(val_items)} validation images (data.val_fraction "
                f"{settings.data.val_fraction} of {where}): the best checkpoint and --patience rest on very few "
                "films; add data or raise data.val_fraction."
            )
    shard = val_items[rank::world_size]  # each rank validates a shard
    size = settings.preprocess.image_size
    trim = settings.preprocess.trim_border
    train = load_pairs(train_pairs, size, trim=trim)
    odd = odd_masks(train)
    if odd and on_status:
        on_status(
            f"Warning: {listing(odd, 'training masks with no lung or nearly all lung')}; check that they are "
            "the right files, drawn white on black."
        )
    return TrainingData(
        train=train,
        val=load_pairs([replace(pair, ignore=None) for _, pair in shard], size, trim=trim),  # scored whole
        truths=[read_mask(pair.mask) for _, pair in shard],
        val_folder=[index for index, _ in shard],
        folders=folders,
        n_val=len(val_items),
        trained_on=frozenset(learnt) | {film_key(pair.name) for pair in train_pairs},
    )
