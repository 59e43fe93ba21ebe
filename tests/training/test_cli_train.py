"""`marginface train` as a newcomer meets it: presets, a start-up banner, validation as it happens, throughput
without validation time, config errors before the data scan, and Ctrl-C / SIGTERM that checkpoint the step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from marginface.cli import main
from marginface.training import presets
from marginface.training.checkpoint import latest_checkpoint
from marginface.training.trainer import Trainer, read_log

TINY = [
    "model.backbone=mobilefacenet", "model.embedding_size=32", "data.synthetic_images_per_identity=2",
    "data.synthetic_identities=6", "batch_size=4", "log_every=1", "device=cpu", "deterministic=true",
    "optim.lr=0.05",
]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_no_config_lists_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("marginface train: no config given: choose a preset with --config NAME_OR_FILE "
                      "(marginface configs lists them):")
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert [line.split()[0] for line in err[1:1 + len(names)]] == names
    assert err[1 + len(names)].startswith("or train the built-in defaults explicitly with key=value overrides")


@pytest.mark.parametrize("argv", [["train", "--list"], ["configs"]])
def test_preset_listing_one_line_each(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(lines) == len(files)
    for line, path in zip(lines, files):
        first_comment = next(t for t in path.read_text().splitlines() if t.startswith("#")).lstrip("# ").strip()
        assert line.split(maxsplit=1) == [path.stem, first_comment]
    # a preset name works where a file path does
    assert presets.resolve_config("synthetic_mobilefacenet_arcface") == CONFIGS / "synthetic_mobilefacenet_arcface.yaml"


def test_loss_parameter_typo_is_caught_before_the_data_scan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the data folder does not exist: a scan would fail on it, so the loss error proves it came first
    code = main(["train", "data.source=folder", f"data.path={tmp_path / 'absent'}", "loss.params.margn=0.3",
                 f"output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "marginface train: config field loss.params: loss 'arcface' has no parameter 'margn' (did you mean "
        "'margin'?); its parameters: scale (default 64.0), margin (default 0.5), easy_margin (default False) "
        "(marginface losses --params lists every loss's)",
        "  (run with marginface --debug ... for the traceback)",
    ]
    assert main(["train", "loss.name=arcfase", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "config field loss.name: unknown loss 'arcfase'; available: adacos," in capsys.readouterr().err
    assert main(["train", "loss.params.margin=2.0", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "config field loss.params: margin (radians) must lie in [0, pi/2), got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_banner_validation_lines_and_lf_log(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    # validation's numbers are not the point here (and embedding is slow on 2 busy cores): a stand-in per step
    monkeypatch.setattr(Trainer, "validate", lambda self: {"synthetic_heldout": [0.61, 0.58][self.step // 2 - 1]})
    assert main(["train", *TINY, "steps=4", "checkpoint_every=2", "validation.synthetic_pairs=10",
                 "validation.synthetic_identities=10", "validation.every=2", f"output_dir={run}"]) == 0
    out = capsys.readouterr().out.splitlines()
    start = out.index(f"train  {run}")
    assert out[start + 1:start + 8] == [
        "  data        synthetic (seed 0): 6 identities, 12 images",
        "  model       mobilefacenet, 32-d; loss arcface (defaults), head dense",
        "  device      cpu, precision fp32",
        "  schedule    4 steps of batch 4 (~1.33 epochs), lr 0.05",
        "  validation  synthetic held-out pairs, every 2 steps",
        f"  output      {run} (checkpoint every 2 steps)",
        "  start       step 0 (new run)",
    ]
    # validation printed when it happens (steps 2 and 4), with the values log.csv holds
    logged = dict(read_log(run)["val_synthetic_heldout"])
    printed = [line for line in out if line.startswith("step ") and ": validation " in line]
    assert [line.split(":")[0] for line in printed] == ["step 2", "step 4"]
    assert printed == ["step 2: validation synthetic_heldout 61.00% (best so far)",
                       "step 4: validation synthetic_heldout 58.00%"]
    assert logged == {2: 0.61, 4: 0.58}
    assert b"\r\n" not in (run / "log.csv").read_bytes()


def test_throughput_excludes_validation_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation after step 2 used to fall into step 3's img/s (and the tqdm ETA); it no longer does. The
    validation here takes 1000 s of a shifted clock, so the test does not depend on how busy the CPU is."""
    import types

    from marginface.training import trainer as trainer_module
    from marginface.training.config import load_config

    offset = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0])
    monkeypatch.setattr(trainer_module, "time", clock)
    config = load_config(None, [*TINY, "steps=4", "checkpoint_every=100", "validation.every=2",
                                f"output_dir={tmp_path}"])
    trainer = Trainer(config).setup()
    trainer.validation_sets = [("slow", None, None)]

    def slow_validation() -> dict[str, float]:
        offset[0] += 1000.0
        return {"slow": 0.5}

    monkeypatch.setattr(trainer, "validate", slow_validation)
    trainer.fit()
    rates = dict(read_log(tmp_path)["img_per_s"])
    # with the 1000 s in it, step 3's rate would be 4 / (1000 + t) img/s, < 0.004
    assert rates[3] > 0.1 * rates[2] and rates[3] > 0.05, rates


def test_exclude_pause_shifts_tqdm_clocks() -> None:
    from tqdm import tqdm

    from marginface.training.run_report import exclude_pause

    with open(os.devnull, "w") as sink, tqdm(total=10, disable=False, file=sink) as bar:
        start, last = bar.start_t, bar.last_print_t
        exclude_pause(bar, 2.5)
        assert (bar.start_t - start, bar.last_print_t - last) == (2.5, 2.5)


@pytest.mark.slow
def test_sigint_checkpoints_the_current_step_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in the middle of a run (checkpoints every 100 steps): the step it stopped at is checkpointed."""
    run = tmp_path / "run"
    argv = ["train", *TINY, "steps=12", "checkpoint_every=100", f"output_dir={run}"]

    def interrupt_after_three_steps() -> None:
        while len(_logged(run)) < 3:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_three_steps, daemon=True).start()
    assert main(argv) == 130
    err = capsys.readouterr().err.splitlines()
    folder = latest_checkpoint(run)
    step = int(folder.name.split("_")[1])
    assert 3 <= step < 12 and _logged(run)[-1] == step
    assert err[-1] == (f"marginface train: interrupted: SIGINT at step {step}; checkpoint {folder} written: "
                       "run the same command to resume from it")
    assert main(argv) == 0  # the same command resumes and finishes
    assert _logged(run) == list(range(1, 13))


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_signal_in_a_subprocess(tmp_path: Path, sig: signal.Signals, workers: int) -> None:
    """SIGTERM to the process (a scheduler); SIGINT to the whole process group, loader workers included (Ctrl-C
    in a terminal): either way the current step is checkpointed and the exit is one line."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "marginface.cli", "train", *TINY, "steps=200", "checkpoint_every=100",
           f"data.num_workers={workers}", f"output_dir={run}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while len(_logged(run)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 128 + sig, stderr[-2000:]
    folder = latest_checkpoint(run)
    step = int(folder.name.split("_")[1])
    assert stderr.rstrip().splitlines()[-1] == (f"marginface train: interrupted: {sig.name} at step {step}; "
                                                f"checkpoint {folder} written: run the same command to resume "
                                                "from it")
    assert step == _logged(run)[-1] and step % 100


def _logged(run: Path) -> list[int]:
    try:
        return [s for s, _ in read_log(run)["loss"]]
    except (FileNotFoundError, KeyError, ValueError):  # not written yet, or a row being written
        return []


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_diverged_training_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-finite loss used to end `train` with a traceback; it is a user error with the remedy."""
    import torch

    from marginface.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module.FaceModel, "forward",
                        lambda self, images, labels, amp=None: torch.tensor(float("nan"), requires_grad=True))
    assert main(["train", *TINY, "steps=2", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()  # the progress bar redraws with \r
    start = err.index("marginface train: loss is nan at step 0: lower optim.lr or use bf16/fp32")
    assert err[start + 1] == "  (run with marginface --debug ... for the traceback)"
    assert "Traceback" not in "\n".join(err)
