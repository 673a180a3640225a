"""predict under hostile conditions: undecodable names, full disks, unusable --out, odd files in the inputs."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxrseg.checkpoint import CheckpointInfo, build_model, save_checkpoint
from cxrseg.cli.app import app
from cxrseg.config import InferenceSettings, Settings
from cxrseg.errors import CheckpointError, InputPathError, OutputError
from cxrseg.inference.predict import PredictOptions, predict_paths
from cxrseg.inputs import Plan, plan_inputs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = Settings.model_validate(
        {"preprocess": {"image_size": 32}, "model": {"base_channels": 4, "depth": 2}, "train": {"precision": "fp32"}}
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, build_model(settings), CheckpointInfo(settings=settings))
    return path


def xrays(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / name, format="PNG")
    return folder


def predict(inputs, out: Path, checkpoint: Path, **options):
    return predict_paths(inputs, out, checkpoint, InferenceSettings(batch_size=2), PredictOptions(workers=1, **options))


def test_item2_undecodable_name_is_escaped_in_the_table_and_resumes(tmp_path: Path, checkpoint: Path) -> None:
    name = os.fsdecode(b"M\xfcller.png")  # Latin-1 bytes, not UTF-8
    src = xrays(tmp_path / "in", name, "plain.png")
    out = tmp_path / "out"
    result = predict([src], out, checkpoint)
    assert [row["status"] for row in result.rows] == ["ok", "ok"]
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["mask"] == "M\\xfcller.png.mask.png" and table[0]["input"].endswith("M\\xfcller.png")
    assert os.path.isfile(os.fsencode(out) + b"/M\xfcller.png.mask.png")  # the mask keeps the real name
    again = predict([src], out, checkpoint, skip_existing=True)
    assert again.skipped == 2


def test_item2_full_disk_keeps_the_table_and_gives_one_line(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = xrays(tmp_path / "in", "a.png", "b.png"), tmp_path / "out"
    predict([src], out, checkpoint)
    before = (out / "predictions.csv").read_bytes()
    real_replace = os.replace

    def full(source, target) -> None:
        if str(target).endswith("predictions.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=r"predictions.csv: No space left on device \(ENOSPC\)"):
        predict([src], out, checkpoint)
    assert (out / "predictions.csv").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_item2_out_below_a_file_is_one_red_line(tmp_path: Path, checkpoint: Path) -> None:
    src = xrays(tmp_path / "in", "a.png")
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(
        app, ["predict", str(src), "--out", str(tmp_path / "afile" / "sub"), "--checkpoint", str(checkpoint)]
    )
    assert result.exit_code == 1 and isinstance(result.exception, OutputError)
    assert "afile/sub: Not a directory (ENOTDIR)" in str(result.exception)


def test_item5_a_model_too_large_for_memory_is_refused_before_inference(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxrseg.inference.engine as engine_module

    monkeypatch.setattr(engine_module, "available_bytes", lambda device: 1024)  # where the engine is set up
    src, out = xrays(tmp_path / "in", "a.png"), tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"needs about .* GiB per image .* use a smaller model"):
        predict([src], out, checkpoint)
    assert not (out / "a.png.mask.png").exists()


def test_item9_evaluate_csv_given_a_folder_is_one_line_before_any_work(tmp_path: Path, checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--csv", str(tmp_path), "--checkpoint", str(checkpoint)])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "is a folder; give a file name" in text


def test_item6_fifo_and_self_link_become_error_rows_without_blocking(tmp_path: Path, checkpoint: Path) -> None:
    src = xrays(tmp_path / "in", "a.png")
    os.mkfifo(src / "pipe")  # no suffix: only the DICOM preamble probe could pick it up
    os.mkfifo(src / "named.png")
    (src / "loop.png").symlink_to(src / "loop.png")
    result = predict([src / "a.png", src / "named.png", src / "loop.png", src], tmp_path / "out", checkpoint)
    by_input = {Path(row["input"]).name: row for row in result.rows}
    assert by_input["a.png"]["status"] == "ok" and "pipe" not in by_input
    assert "not a regular file" in by_input["named.png"]["message"]
    assert by_input["loop.png"]["status"] == "error"


def _plan_within(seconds: int, pattern: str) -> Plan:
    """`plan_inputs([pattern])`, or TimeoutError after `seconds` (a walk that never ends)."""

    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError(f"planning {pattern} took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        return plan_inputs([pattern])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_recursive_glob_over_link_cycles_finishes_with_each_file_once(tmp_path: Path) -> None:
    src = xrays(tmp_path / "in", "a.png")
    xrays(src / "sub", "b.png")
    (src / "up").symlink_to("..")  # in/up/in/up/...: a cycle through the parent
    (src / "sub" / "self").symlink_to(".")  # two through the folder itself: 2**40 paths for glob.glob
    (src / "sub" / "again").symlink_to(".")
    (src / "loop.png").symlink_to("loop.png")  # a link to itself beside them hides nothing
    plan = _plan_within(10, f"{src}/**/*.png")
    assert sorted(job.name for job in plan.jobs if not job.error) == ["a.png", "sub/b.png"]
    assert [Path(job.source).name for job in plan.jobs if job.error] == ["loop.png"]


def test_recursive_glob_refuses_an_out_inside_its_tree(tmp_path: Path, checkpoint: Path) -> None:
    src = xrays(tmp_path / "in", "a.png")
    out = src / "predictions"
    args = ["predict", f"{src}/**/*.png", "--out", str(out), "--checkpoint", str(checkpoint)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, InputPathError) and result.exception.exit_code == 2  # before loading a model
    assert str(out) in str(result.exception) and f"input folder {src} " in str(result.exception)
    with pytest.raises(InputPathError, match="or inside it"):
        predict([f"{src}/**/*.png"], out, checkpoint)
    assert not out.exists()


def test_work_finished_while_an_interrupted_run_stops_gets_its_rows(tmp_path: Path, checkpoint: Path) -> None:
    """Catches Ctrl-C losing rows: the writing processes finish the images they had started, but their rows
    were dropped, so predictions.csv named fewer masks than were on disk (48 masks, 32 rows)."""
    src = xrays(tmp_path / "in", *(f"x{i:02}.png" for i in range(12)))
    out = tmp_path / "out"

    def interrupt(count: int, images_per_s: float) -> None:
        raise KeyboardInterrupt  # after the first row, with the pool busy on the next ones

    options = PredictOptions(workers=2, overlay=False)
    with pytest.raises(KeyboardInterrupt):
        predict_paths([src], out, checkpoint, InferenceSettings(batch_size=2), options, on_advance=interrupt)
    with (out / "predictions.csv").open(newline="") as handle:
        recorded = {row["mask"] for row in csv.DictReader(handle)}
    written = {path.name for path in out.glob("*.mask.png")}
    assert len(written) > 1 and recorded == written


def test_ctrl_c_in_predict_says_interrupted_and_how_to_resume(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Catches a silent Ctrl-C: typer turned KeyboardInterrupt into exit code 130 itself, so main() never
    printed "Interrupted." and nothing said that the table was saved for --skip-existing."""
    import cxrseg.inference.predict as predict_module
    from cxrseg.cli import main

    original = predict_module.predict_paths

    def interrupted(*args, **kwargs):
        def stop(count: int, images_per_s: float) -> None:
            raise KeyboardInterrupt

        return original(*args[:5], on_start=args[5], on_advance=stop)

    monkeypatch.setattr(predict_module, "predict_paths", interrupted)
    src, out = xrays(tmp_path / "in", "a.png", "b.png"), tmp_path / "out"
    argv = ["cxrseg", "predict", str(src), "--out", str(out), "--checkpoint", str(checkpoint), "--workers", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 130
    said = " ".join(capsys.readouterr().err.split())
    assert said.startswith("Interrupted. Ctrl-C.") and "--skip-existing" in said, said
    assert "predictions.csv" in said and (out / "predictions.csv").is_file()


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        listed = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        todo += [int(child) for child in listed if int(child) not in found]
        found.update(int(child) for child in listed)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("command", "target"), [("predict", "process"), ("evaluate", "process"), ("predict", "group")])
def test_sigterm_mid_run_leaves_no_worker_processes_behind(tmp_path: Path, command: str, target: str) -> None:
    """Catches SIGTERM orphaning the workers: SIGTERM (what `timeout`, systemd, job runners and `kill` send)
    ended the main process at once, its decoding and writing processes waited forever on pipes they held
    themselves, keeping the command's stdout/stderr open (a wrapper reading them hung) and no table was saved.
    Now SIGTERM stops like Ctrl-C: exit code 143, the rows of every mask written saved, no process left. Sent to
    the whole process group (`timeout`, systemd, scancel), it killed the decoding processes too, and torch's
    error for their death, raised in the middle of the clean-up, lost the rows of masks already written."""
    from cxrseg.assets import SAMPLE_DIR

    films = tmp_path / "data" / "image"
    films.mkdir(parents=True)
    (tmp_path / "data" / "mask").mkdir()
    for copy in range(4):
        for source in sorted((SAMPLE_DIR / "image").glob("*.png"))[:5]:
            shutil.copy(source, films / f"{copy}_{source.name}")
            shutil.copy(SAMPLE_DIR / "mask" / source.name, tmp_path / "data" / "mask" / f"{copy}_{source.name}")
    out = tmp_path / "out"
    args = {
        "predict": ["predict", str(films), "--out", str(out), "--no-overlay", "--workers", "2"],
        "evaluate": ["evaluate", "--data", str(tmp_path / "data"), "--split", "all"],
    }[command]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "cxrseg", *args, "--batch-size", "2"]
    main = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and main.poll() is None:  # the workers run, and (predict) a mask is out
            children |= _descendants(main.pid)
            if len(children) >= 2 and (command == "evaluate" or list(out.glob("*.mask.png"))):
                break
            time.sleep(0.05)
        assert main.poll() is None, f"the run ended before the SIGTERM (exit code {main.returncode})"
        assert len(children) >= 2, "the run never started its worker processes"
        if target == "group":
            os.killpg(main.pid, signal.SIGTERM)
        else:
            main.send_signal(signal.SIGTERM)
        try:
            _, stderr = main.communicate(timeout=30)  # returns only once no process holds the pipes
        except subprocess.TimeoutExpired:
            left = sorted(pid for pid in children if _alive(pid))
            pytest.fail(f"stdout/stderr still open 30 s after SIGTERM; worker processes {left} outlived the run")
        time.sleep(0.5)
        alive = sorted(pid for pid in children | _descendants(main.pid) if _alive(pid))
        assert not alive, f"worker processes {alive} outlived the main process"
        assert main.returncode == 143, stderr
        assert "Interrupted. SIGTERM." in " ".join(stderr.split()), stderr
        if command == "predict":
            with (out / "predictions.csv").open(newline="") as handle:
                recorded = {row["mask"] for row in csv.DictReader(handle)}
            assert recorded == {path.name for path in out.glob("*.mask.png")}
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if main.poll() is None:
            main.kill()
            main.communicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("way", ["prctl", "watchdog thread"])
def test_a_worker_ends_when_its_parent_is_killed(tmp_path: Path, way: str) -> None:
    """Catches workers outliving a main process that could not clean up (SIGKILL, a crash, the OOM killer):
    they waited forever on queues whose other ends they held themselves. die_with_parent ends them."""
    script = f"""
import os, sys, time
from cxrseg import signals
parent = os.getpid()
if os.fork() == 0:
    if {way!r} != "prctl":
        sys.platform = "elsewhere"  # as on macOS: no prctl
    signals.die_with_parent(parent)
    print(os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    main = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    worker = 0
    try:
        worker = int(main.stdout.readline())  # the worker is set up
        main.kill()
        main.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker), f"worker {worker} outlived its parent by 5 s"
    finally:
        if worker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
        main.kill()
        main.communicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and SIGKILL")
def test_a_writing_process_killed_outright_does_not_hang_the_clean_up() -> None:
    """The writing processes ignore SIGTERM (a SIGTERM to the process group must not kill them mid-image); a
    broken pool ends its survivors with SIGTERM and waits for them, and one blocked on a queue lock held by the
    dead worker was waited on forever: predict hung after the OOM killer took one of its workers."""
    import threading
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    from cxrseg.inference.pipeline import _context, _start_worker, _stop

    pool = ProcessPoolExecutor(3, _context(), initializer=_start_worker, initargs=(os.getpid(),))
    try:
        for future in [pool.submit(int) for _ in range(6)]:
            future.result()
        victim = next(iter(pool._processes))
        os.kill(victim, signal.SIGKILL)  # an idle worker, as the OOM killer would pick
        deadline = time.monotonic() + 10
        while not pool._broken and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool._broken, "the pool never noticed its dead worker"
        stopper = threading.Thread(target=_stop, args=(pool, None, deque(), None), daemon=True)
        stopper.start()
        stopper.join(timeout=20)
        assert not stopper.is_alive(), "the clean-up still waits on the surviving workers"
    finally:
        for process in list((pool._processes or {}).values()):
            with contextlib.suppress(Exception):
                process.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_a_sigterm_whose_error_a_library_swallows_still_stops_the_command() -> None:
    """torch's profiler catches Exception around a lazy import: a SIGTERM arriving there lost its error, and
    evaluate ran on to exit code 0. The error is raised again when the guarded work ends."""
    from cxrseg.errors import Interrupted
    from cxrseg.signals import sigterm_raises

    with pytest.raises(Interrupted) as caught, sigterm_raises(lambda: Interrupted("SIGTERM.", 143)) as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here, in the main thread
        except Exception:  # noqa: S110 (the swallowing library)
            pass
        assert stop["signal"] == signal.SIGTERM
    assert caught.value.exit_code == 143


def _undecodable(item: int) -> str:
    return f"{item}: not decoded"  # a message: the pipeline sends it to finish without the model


def _dies_on_one(item: int, decoded: object, prob: object) -> int:
    if item == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the out-of-memory killer takes this writing process
    return item


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and SIGKILL")
def test_a_writing_process_killed_outright_is_one_line_not_a_traceback() -> None:
    """A worker taken by the OOM killer ended predict and evaluate with a BrokenProcessPool traceback."""
    from types import SimpleNamespace

    from cxrseg.errors import WorkerError
    from cxrseg.inference.pipeline import run_pipeline

    engine = SimpleNamespace(cfg=SimpleNamespace(batch_size=2))
    with pytest.raises(WorkerError, match="a writing process ended abruptly"):
        list(run_pipeline(engine, list(range(6)), _undecodable, _dies_on_one, workers=2))
