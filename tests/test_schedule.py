"""The learning-rate schedule: warm-up, peak, cosine to the floor, and a resume that changes --epochs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cxrseg.training.schedule import LR_FLOOR, LRSchedule, lr_factor


def test_warm_up_is_linear_to_the_peak() -> None:
    assert [lr_factor(step, 100, 4) for step in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_from_the_peak_to_the_floor() -> None:
    assert lr_factor(10, 110, 10) == 1.0
    assert lr_factor(60, 110, 10) == pytest.approx(LR_FLOOR + (1 - LR_FLOOR) / 2)  # half way: half the span
    assert lr_factor(35, 110, 10) == pytest.approx(LR_FLOOR + (1 - LR_FLOOR) * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(110, 110, 10) == pytest.approx(0.01) and lr_factor(500, 110, 10) == pytest.approx(0.01)
    factors = [lr_factor(step, 110, 10) for step in range(10, 111)]
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))


def test_without_warm_up_steps_the_cosine_starts_at_once() -> None:
    assert lr_factor(0, 10, 0) == 1.0 and lr_factor(5, 10, 0) == pytest.approx(0.505)


def test_an_anchor_continues_the_curve_from_its_phase() -> None:
    """From step 40 at phase 0.5, the cosine reaches the floor at the new total instead of the old one."""
    assert lr_factor(40, 200, 10, anchor=40, anchor_phase=0.5) == pytest.approx(0.505)
    three_quarters = LR_FLOOR + (1 - LR_FLOOR) * (1 + math.cos(0.75 * math.pi)) / 2  # phase 0.5 + 0.5 * 80 / 160
    assert lr_factor(120, 200, 10, anchor=40, anchor_phase=0.5) == pytest.approx(three_quarters)
    assert lr_factor(200, 200, 10, anchor=40, anchor_phase=0.5) == pytest.approx(LR_FLOOR)


def run_steps(total: int, warmup: int, steps: int, resume: tuple[int, int] | None = None) -> list[float]:
    """Learning rates (peak 1) of LambdaLR over `steps`; with `resume=(step, new_total)` the scheduler is saved
    at `step` through JSON, as the resume state is, and reloaded under a schedule built for `new_total`."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(total, warmup))
    rates = []
    for step in range(steps):
        if resume and step == resume[0]:
            saved, current = json.loads(json.dumps(scheduler.state_dict())), optimizer.param_groups[0]["lr"]
            new_total = resume[1]
            optimizer = torch.optim.SGD([parameter], lr=1.0)
            schedule = LRSchedule(new_total, max(1, int(warmup * new_total / total)))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            optimizer.param_groups[0]["lr"] = current  # as the optimizer state restores it
            scheduler.load_state_dict(saved)
            schedule.stretch(scheduler.last_epoch, new_total)
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_resume_with_the_same_total_is_the_uninterrupted_schedule() -> None:
    assert run_steps(60, 3, 60, resume=(25, 60)) == run_steps(60, 3, 60)


@pytest.mark.parametrize("resume_at", [2, 10, 30, 59])
def test_resume_with_more_steps_continues_without_a_second_warm_up(resume_at: int) -> None:
    rates = run_steps(60, 3, 120, resume=(resume_at, 120))
    before, after = rates[resume_at - 1], rates[resume_at]
    assert after <= before + 1 / 3 + 1e-9  # inside the warm-up it may still climb by one warm-up step
    if resume_at >= 3:
        assert after == pytest.approx(before, abs=0.03)  # no jump
        assert all(a >= b for a, b in zip(rates[resume_at - 1 :], rates[resume_at:], strict=False))
    assert rates[-1] == pytest.approx(LR_FLOOR, abs=1e-3) and rates[-1] >= LR_FLOOR - 1e-12
    assert rates[100] > LR_FLOOR + 1e-3 or resume_at == 59  # stretched: still decaying after the old total


def test_a_finished_run_resumed_with_more_epochs_stays_at_the_floor() -> None:
    """The case a warm restart got wrong: 3 epochs done, resumed with --epochs 6 jumped to 59% of the peak."""
    rates = run_steps(30, 1, 60, resume=(30, 60))
    assert rates[29] < 0.02
    assert all(rate == pytest.approx(LR_FLOOR) for rate in rates[30:])


def test_resume_with_fewer_steps_decays_faster() -> None:
    rates = run_steps(100, 5, 61, resume=(40, 60))
    assert rates[40] == pytest.approx(rates[39], abs=0.03)
    assert rates[60] == pytest.approx(LR_FLOOR) and rates[50] < run_steps(100, 5, 51)[50]


@pytest.mark.slow
def test_training_resumed_with_more_epochs_continues_the_decay(tmp_path: Path) -> None:
    """Through the training loop: a finished 2-epoch run resumed with --epochs 4 keeps the floor LR."""
    from cxrseg.config import Settings
    from cxrseg.training.loop import train
    from tests.conftest import write_dataset

    data = write_dataset(tmp_path / "data", n_train=12, n_test=2)

    def settings(epochs: int) -> Settings:
        train_cfg = {"epochs": epochs, "batch_size": 4, "runs_dir": tmp_path / "runs", "previews": 0, "lr": 1e-2}
        model = {"base_channels": 4, "depth": 2}
        return Settings.model_validate(
            {"data": {"root": data}, "preprocess": {"image_size": 32}, "model": model, "train": train_cfg}
        )

    run = train(settings(2)).run_dir
    train(settings(4), resume_dir=run)
    rates = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rates) == 4 and rates[1] == pytest.approx(1e-2 * LR_FLOOR)
    assert rates[2:] == pytest.approx([1e-2 * LR_FLOOR] * 2)  # a warm restart: 18% of the peak after epoch 3
