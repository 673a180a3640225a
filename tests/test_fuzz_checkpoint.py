"""Property test: loading a checkpoint with random metadata ends in a model or a CheckpointError, quickly,
and never builds a model larger than the stored weights."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import strategies as st
from safetensors.torch import save_file

from cxrseg.checkpoint import FORMAT, build_model, load_checkpoint
from cxrseg.config import Settings
from cxrseg.errors import CheckpointError
from tests.test_fuzz_decode import BUDGETS, run_property

TINY = Settings.model_validate({"model": {"base_channels": 4, "depth": 2}, "preprocess": {"image_size": 32}})
WEIGHTS = {k: v.clone() for k, v in build_model(TINY).state_dict().items()}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def settings_json(draw: st.DrawFn) -> str:
    """Valid settings with random model and preprocessing numbers, or arbitrary JSON, or not JSON at all."""
    values = TINY.model_dump(mode="json")
    values["model"] = {"depth": draw(st.integers(-1, 8)), "base_channels": draw(st.sampled_from([4, 8, 128, 3, 0]))}
    values["preprocess"]["image_size"] = draw(st.sampled_from([32, 64, 2048, 4096, 31]))
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return json.dumps(values)
    if choice == 1:
        return json.dumps(draw(json_values))
    if choice == 2:
        return draw(st.sampled_from(["[" * 5000, '{"a": ' * 3000, "", "nan", "{}"]))
    return draw(st.text(max_size=40))


metadata = st.fixed_dictionaries(
    {"format": st.sampled_from([FORMAT, FORMAT, "other", ""]), "settings": settings_json()},
    optional={
        "format_version": st.sampled_from(["1", "0", "2", "abc", "-1", "1e9", " 1"]),
        "epoch": st.text(max_size=6) | st.integers().map(str),
        "metrics": json_values.map(json.dumps) | st.text(max_size=10),
        "cxrseg_version": st.text(max_size=10),
    },
)
tensor_sets = st.sampled_from(["tiny", "empty", "extra", "reshaped"])


def _tensors(kind: str) -> dict[str, torch.Tensor]:
    if kind == "empty":
        return {"x": torch.zeros(1)}
    tensors = dict(WEIGHTS)
    if kind == "extra":
        tensors["module.extra"] = torch.zeros(3)
    if kind == "reshaped":
        tensors["head.weight"] = torch.zeros(2, 4, 1, 1)
    return tensors


def _load_one(case: tuple[dict[str, str], str]) -> None:
    meta, kind = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.safetensors"
        save_file(_tensors(kind), str(path), metadata=meta)
        start = time.monotonic()
        try:
            model, info = load_checkpoint(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc)
        else:
            assert kind == "tiny" and info.settings.model == TINY.model
            assert sum(p.numel() for p in model.parameters()) < 10_000
        assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("budget", BUDGETS)
def test_checkpoint_loading_ends_in_a_model_or_a_checkpoint_error(budget: int) -> None:
    run_property(budget, st.tuples(metadata, tensor_sets), _load_one)
