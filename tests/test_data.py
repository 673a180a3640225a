"""Pairing, reading and the shared preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrseg.dataset import dataset_splits, default_split, find_pairs, load_pairs, select_pairs
from cxrseg.errors import DataError
from cxrseg.imaging import read_image, read_mask
from cxrseg.preprocess import fit_to_square, normalize, restore
from tests.conftest import ellipse_pair, write_dataset


def test_pairs_by_stem_with_jpeg_masks_and_thresholds_grey_edges(dataset: Path) -> None:
    pairs = find_pairs(dataset / "image", dataset / "mask")
    assert [p.name for p in pairs] == [f"case_{i:03d}" for i in range(6)]
    assert all(p.image.suffix == ".png" and p.mask.suffix == ".jpeg" for p in pairs)
    raw = np.asarray(Image.open(pairs[0].mask))
    assert len(np.unique(raw)) > 2  # JPEG left grey edges ...
    mask = read_mask(pairs[0].mask)
    assert mask.dtype == bool  # ... that the reader thresholds at >127
    _, truth = ellipse_pair(0)
    assert (mask == truth).mean() > 0.98


def test_mispaired_folders_list_the_offending_files(dataset: Path) -> None:
    (dataset / "image" / "case_000.png").rename(dataset / "image" / "other.png")
    with pytest.raises(DataError) as info:
        find_pairs(dataset / "image", dataset / "mask")
    message = str(info.value)
    assert "other.png" in message and "case_000.jpeg" in message and "without a mask" in message


def test_duplicate_stems_are_refused(dataset: Path) -> None:
    Image.new("L", (64, 64)).save(dataset / "image" / "case_001.bmp")
    with pytest.raises(DataError, match="share a stem"):
        find_pairs(dataset / "image", dataset / "mask")


def test_mask_named_with_mask_suffix_pairs(tmp_path: Path) -> None:
    for folder in ("image", "mask"):
        (tmp_path / folder).mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "image" / "x.png")
    Image.new("L", (8, 8)).save(tmp_path / "mask" / "x_mask.png")
    assert [p.name for p in find_pairs(tmp_path / "image", tmp_path / "mask")] == ["x"]


def test_size_mismatch_and_unreadable_files_are_named(dataset: Path) -> None:
    Image.new("RGB", (40, 64)).save(dataset / "image" / "case_002.png")
    with pytest.raises(DataError, match="case_002.png"):
        load_pairs(find_pairs(dataset / "image", dataset / "mask"), 32)
    (dataset / "image" / "case_003.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="case_003.png"):
        read_image(dataset / "image" / "case_003.png")


def test_reads_16_bit_rgba_and_rgb(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = read_image(tmp_path / "deep.png")
    assert deep.dtype == np.float32 and len(np.unique(deep)) == 64 * 64  # no 8-bit truncation
    Image.new("RGBA", (10, 12), (255, 255, 255, 128)).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png").shape == (12, 10)
    assert np.allclose(read_image(tmp_path / "rgba.png"), 1.0)


def test_split_without_test_folders_is_seeded(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", n_train=10, n_test=0)
    for folder in ("test_image", "test_mask"):
        (root / folder).rmdir()
    a, b = dataset_splits(root, 0.3, seed=1), dataset_splits(root, 0.3, seed=1)
    assert a == b and len(a["val"]) == 3 and len(a["train"]) == 7 and a["test"] == []
    assert not {p.name for p in a["train"]} & {p.name for p in a["val"]}
    assert dataset_splits(root, 0.3, seed=2)["val"] != a["val"]


def test_validation_is_carved_from_image_even_with_a_test_folder(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", n_train=10, n_test=3)
    splits = dataset_splits(root, 0.2, seed=0)
    assert len(splits["train"]) + len(splits["val"]) == 10 and splits["val"] and len(splits["test"]) == 3
    assert all(p.image.parent.name == "image" for p in splits["train"] + splits["val"])
    assert all(p.image.parent.name == "test_image" for p in splits["test"])
    everything = sorted(splits["train"] + splits["val"] + splits["test"], key=lambda p: p.name)
    assert select_pairs(root, "all", 0.2) == everything
    assert default_split(root) == "test"


def test_a_held_out_set_alone_is_scored_on_test(tmp_path: Path) -> None:
    """Only test_image/ and test_mask/ (or a training side that could not train): `test` needs no more."""
    root = write_dataset(tmp_path / "held_out", n_train=0, n_test=3)
    assert [p.name for p in select_pairs(root, "test")] == ["case_000", "case_001", "case_002"]
    (root / "image" / "stray.png").write_bytes(b"")  # a training side that would stop a training run
    assert len(select_pairs(root, "test")) == 3
    with pytest.raises(DataError):
        select_pairs(root, "val")


def test_test_split_of_a_folder_without_one_says_what_to_use(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", n_train=4, n_test=0)
    for folder in ("test_image", "test_mask"):
        (root / folder).rmdir()
    assert default_split(root) == "val"
    with pytest.raises(DataError, match="--split val"):
        select_pairs(root, "test")


def _image_mask_folder(root: Path, names: list[str]) -> Path:
    for folder in ("image", "mask"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image, mask = ellipse_pair(i, 32, 32)
        Image.fromarray(image).save(root / "image" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "mask" / f"{name}.png")
    return root


def _names(pairs: list) -> set[str]:
    return {pair.name for pair in pairs}


def test_adding_or_removing_pairs_never_moves_a_trained_on_film_into_val(tmp_path: Path) -> None:
    """The `name` rule: a folder that changed after training (a bad mask deleted, films added) is split so that
    `evaluate --split val` or a resumed run never validates on a film the model was trained on."""
    root = _image_mask_folder(tmp_path / "d", [f"film_{i:03d}" for i in range(60)])
    before = dataset_splits(root, 0.2, seed=3)
    removed = before["train"][:3] + before["val"][:2]
    for pair in removed:
        pair.image.unlink()
        pair.mask.unlink()
    _image_mask_folder(root, [f"new_{i:03d}" for i in range(20)])
    after = dataset_splits(root, 0.2, seed=3)
    assert not _names(before["train"]) & _names(after["val"])
    assert _names(before["val"]) - _names(removed) <= _names(after["val"])  # and validation films stay there
    assert _names(after["val"]) != _names(before["val"])  # new films did join `val`


def test_the_name_rule_keeps_about_the_asked_share_and_the_minimums(tmp_path: Path) -> None:
    from cxrseg.dataset import split_train_val

    pairs = find_pairs(
        *(_image_mask_folder(tmp_path / "d", [f"x{i}" for i in range(3)]) / f for f in ("image", "mask"))
    )
    for fraction in (0.01, 0.5, 0.99):  # 3 pairs: never an empty val, never fewer than 2 to train on
        train, val = split_train_val(pairs, fraction, 0, "name")
        assert (len(train), len(val)) == (2, 1) and _names(train + val) == {"x0", "x1", "x2"}
    many = [type(pairs[0])(Path(f"image/f{i}.png"), Path(f"mask/f{i}.png")) for i in range(2000)]
    for seed in (0, 1):
        train, val = split_train_val(many, 0.1, seed, "name")
        assert 160 <= len(val) <= 240 and len(train) + len(val) == 2000
    assert _names(split_train_val(many, 0.1, 0, "name")[1]) != _names(split_train_val(many, 0.1, 1, "name")[1])


def test_the_shuffle_rule_still_gives_the_splits_old_checkpoints_were_trained_with(tmp_path: Path) -> None:
    """Checkpoints that record no rule (the bundled model among them) were split this way; `evaluate --split val`
    must find the same films, or it would score films they were trained on. Names from the code of that time."""
    root = _image_mask_folder(tmp_path / "d", [f"case_{i:03d}" for i in range(12)])
    expected = {
        (0.1, 0): ["01"], (0.1, 7): ["07"], (0.25, 0): ["01", "08", "09"], (0.25, 7): ["03", "07", "11"],
        (0.5, 0): ["01", "02", "05", "08", "09", "10"], (0.5, 7): ["03", "04", "07", "08", "10", "11"],
    }  # fmt: skip
    for (fraction, seed), val in expected.items():
        assert [p.name[-2:] for p in dataset_splits(root, fraction, seed, rule="shuffle")["val"]] == val
        assert [p.name[-2:] for p in select_pairs(root, "val", fraction, seed, rule="shuffle")] == val


def test_evaluate_split_all_needs_no_training_split(tmp_path: Path) -> None:
    """`all` pairs image/ and test_image/ directly: one pair, or a held-out folder alone, is enough."""
    one = _image_mask_folder(tmp_path / "one", ["only"])
    assert [p.name for p in select_pairs(one, "all")] == ["only"]
    held_out = write_dataset(tmp_path / "held_out", n_train=0, n_test=2)
    for folder in ("image", "mask"):
        (held_out / folder).rmdir()
    assert [p.name for p in select_pairs(held_out, "all")] == ["case_000", "case_001"]
    with pytest.raises(DataError, match="not found"):
        select_pairs(tmp_path / "nowhere", "all")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        select_pairs(tmp_path / "empty", "all")


def test_missing_dataset_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data"):
        dataset_splits(tmp_path / "nowhere")


def test_fit_and_restore_preserve_aspect_and_position() -> None:
    image = np.zeros((100, 50), dtype=np.float32)
    image[:, :25] = 1.0  # left half bright
    fitted, geometry = fit_to_square(image, 64)
    assert fitted.shape == (64, 64) and geometry.inner_height == 64 and geometry.inner_width == 32
    assert fitted[:, :16].max() == 0  # padding left and right
    back = restore(torch.from_numpy(fitted), geometry).numpy()
    assert back.shape == (100, 50)
    assert back[:, :20].mean() > 0.95 and back[:, 30:].mean() < 0.05


def test_normalize_ignores_padding() -> None:
    images = torch.rand(2, 1, 8, 8)
    valid = torch.zeros(2, 1, 8, 8)
    valid[:, :, 2:6] = 1
    out = normalize(images, valid)
    inside = out[valid.bool()].view(2, -1)
    assert torch.allclose(inside.mean(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(inside.std(1, unbiased=False), torch.ones(2), atol=1e-3)
    assert out[~valid.bool()].abs().max() == 0


def test_masks_stored_as_0_1_or_16_bit_are_read(tmp_path: Path) -> None:
    _, truth = ellipse_pair(3)
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "ones.png")  # 0/1 masks
    Image.fromarray(truth.astype(np.uint16) * 65535).save(tmp_path / "deep.png")  # 16-bit 0/65535
    assert (read_mask(tmp_path / "ones.png") == truth).all()
    assert (read_mask(tmp_path / "deep.png") == truth).all()


def test_masks_in_other_value_conventions_are_not_read_as_empty(tmp_path: Path) -> None:
    _, truth = ellipse_pair(3)
    labels = truth.astype(np.uint8)
    labels[:, : truth.shape[1] // 2] *= 2  # one number per lung: 0/1/2
    Image.fromarray(labels).save(tmp_path / "labels.png")
    Image.fromarray(truth.astype(np.uint8) * 100).save(tmp_path / "hundred.png")  # 0/100
    Image.fromarray(truth.astype(np.uint16) * 4095).save(tmp_path / "twelve.png")  # 12-bit 0/4095 in 16 bits
    red = np.zeros((*truth.shape, 3), np.uint8)
    red[truth, 0] = 255  # a red drawing: grey 76 once converted
    Image.fromarray(red).save(tmp_path / "red.png")
    soft = np.where(truth, 0.9, 0.1).astype(np.float32)  # a soft float mask with a floor
    Image.fromarray(soft, "F").save(tmp_path / "soft.tif")
    for name in ("labels.png", "hundred.png", "twelve.png", "red.png", "soft.tif"):
        assert (read_mask(tmp_path / name) == truth).all(), name


def test_masks_with_a_grey_or_a_colour_per_lung_keep_both_lungs(tmp_path: Path) -> None:
    """Read by luminance and cut at half the largest value, the darker lung was dropped: Dice against such a
    mask halved, and training learnt one lung."""
    _, truth = ellipse_pair(5)
    right = truth.copy()
    right[:, truth.shape[1] // 2 :] = False
    for low, high in ((127, 255), (100, 200), (20000, 65535)):  # a grey level per lung, 8 and 16 bits
        grey = np.where(right, low, np.where(truth, high, 0)).astype(np.uint16 if high > 255 else np.uint8)
        Image.fromarray(grey).save(tmp_path / f"grey_{low}.png")
    colour = np.zeros((*truth.shape, 3), np.uint8)
    colour[right, 2] = 255  # blue: grey 29
    colour[truth & ~right, 0] = 255  # red: grey 76
    Image.fromarray(colour).save(tmp_path / "colour.png")
    Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "palette.png")
    alpha = np.zeros((*truth.shape, 4), np.uint8)
    alpha[truth, 3] = 255  # drawn in the alpha channel alone, the colours black
    Image.fromarray(alpha, "RGBA").save(tmp_path / "alpha.png")
    for name in ("grey_127.png", "grey_100.png", "grey_20000.png", "colour.png", "palette.png", "alpha.png"):
        assert (read_mask(tmp_path / name) == truth).all(), name


def test_another_structure_in_its_own_level_is_not_taken_for_lung(tmp_path: Path) -> None:
    """A grey or colour per lung makes a label map, but a heart drawn in its own grey or colour between the
    lungs is not lung: the levels of a label map lie off to the sides."""
    _, truth = ellipse_pair(7)
    heart = np.zeros_like(truth)
    heart[30:50, 28:38] = True
    heart &= ~truth
    Image.fromarray(np.where(truth, 255, np.where(heart, 85, 0)).astype(np.uint8)).save(tmp_path / "grey.png")
    colour = np.zeros((*truth.shape, 3), np.uint8)
    colour[truth] = 255
    colour[heart] = (200, 0, 0)  # a red heart beside white lungs
    Image.fromarray(colour).save(tmp_path / "colour.png")
    la = np.zeros((*truth.shape, 2), np.uint8)
    la[truth, 1] = 255  # LA, drawn in the alpha channel alone
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    for name in ("grey.png", "colour.png", "la.png"):
        assert (read_mask(tmp_path / name) == truth).all(), name


def test_a_faint_floor_or_soft_edges_are_not_taken_for_labels(tmp_path: Path) -> None:
    _, truth = ellipse_pair(6)
    floor = np.where(truth, 255, 1).astype(np.uint8)  # a background of 1 (a tool's off-by-one) is not lung
    Image.fromarray(floor).save(tmp_path / "floor.png")
    assert (read_mask(tmp_path / "floor.png") == truth).all()
    edges = Image.fromarray(truth.astype(np.uint8) * 255).resize((128, 128), Image.Resampling.BILINEAR)
    edges.save(tmp_path / "edges.png")  # many grey levels on the outline: cut at half, as before
    assert (read_mask(tmp_path / "edges.png") == (np.asarray(edges) > 127.5)).all()


def test_every_unreadable_file_is_listed_at_once(dataset: Path) -> None:
    for name in ("case_001.png", "case_004.png"):
        (dataset / "image" / name).write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError) as info:
        load_pairs(find_pairs(dataset / "image", dataset / "mask"), 32)
    assert "case_001.png" in str(info.value) and "case_004.png" in str(info.value)


def test_training_warns_about_masks_with_no_lung_or_all_lung(tmp_path: Path) -> None:
    from cxrseg.training.data import load_training_data, split_folders
    from tests.conftest import tiny_config

    data = write_dataset(tmp_path / "data", n_train=10, n_test=0, jpeg_masks=False)
    for folder in ("test_image", "test_mask"):
        (data / folder).rmdir()
    settings = tiny_config(tmp_path / "runs", data)
    notes: list[str] = []
    load_training_data(settings, on_status=notes.append)
    assert not [note for note in notes if "no lung" in note]  # real ellipse masks: nothing to say
    train, _, _ = split_folders(settings)
    empty, full = train[0].mask, train[1].mask
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(empty)
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(full)
    notes.clear()
    load_training_data(settings, on_status=notes.append)
    [warning] = [note for note in notes if "no lung" in note]
    assert warning.startswith("Warning: 2 training masks") and empty.name in warning and full.name in warning
