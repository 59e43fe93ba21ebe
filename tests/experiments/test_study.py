"""``marginface study``: the plan, the real child-process run with resume, failures, and the summary's numbers."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from marginface.cli import main
from marginface.data.bins import write_verification_bin
from marginface.data.synthetic import render_face, synthetic_pairs
from marginface.experiments import study

TINY = ["data.source=synthetic", "data.synthetic_identities=6", "data.synthetic_images_per_identity=2",
        "model.backbone=mobilefacenet", "model.embedding_size=32", "batch_size=4", "steps=2", "log_every=1",
        "checkpoint_every=1", "device=cpu", "optim.lr=0.05", "optim.warmup_steps=0", "validation.synthetic_pairs=0"]


def _bin(path: Path) -> Path:
    """20 pairs of held-out synthetic identities (100+), PNG-encoded as a .bin stores them."""
    members, issame = synthetic_pairs(5, 3, 20, seed=0)
    images = []
    for identity, index in members:
        buf = io.BytesIO()
        Image.fromarray(render_face(0, 100 + int(identity), int(index))).save(buf, format="PNG")
        images.append(buf.getvalue())
    return write_verification_bin(path, images, issame)


def _spec(tmp_path: Path, arms: dict) -> Path:
    spec = {"preset": "synthetic_mobilefacenet_arcface", "overrides": TINY, "seeds": [0], "arms": arms,
            "eval": {"bins": [str(_bin(tmp_path / "held.bin"))], "flip": False}, "lanes": 2}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_study_runs_resumes_and_reports_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, {"arcface": ["loss.name=arcface"], "cosface": ["loss.name=cosface"],
                            "broken": ["loss.name=nosuchloss"]})
    out = tmp_path / "out"
    assert main(["study", str(spec), "--output", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "broken seed 0: training exited with 2" in err
    rows = study.read_results(out / "results.csv")
    assert [(r["arm"], r["seed"], r["steps"]) for r in rows] == [("arcface", "0", "2"), ("cosface", "0", "2")]
    report = json.loads((out / "logs" / "arcface_s0.eval.json").read_text())
    acc = report["verification"][0]["accuracy"]
    assert float(rows[0]["held_acc"]) == pytest.approx(acc, abs=1e-6)
    assert 0.0 < acc <= 1.0 and math.isfinite(float(rows[0]["held_acc_std"]))
    _assert_environment_recorded(rows, threads="1")

    # resume: a run with its row is skipped; a trained run without a row is evaluated, not retrained
    checkpoint = out / "cosface_s0" / "checkpoints" / "step_00000002" / "model.safetensors"
    mtime = checkpoint.stat().st_mtime_ns
    with (out / "results.csv").open() as f:
        kept = [r for r in csv.DictReader(f) if r["arm"] == "arcface"]
    study._write_csv(out / "results.csv", study.columns(study.load_study(spec)), kept)
    assert main(["study", str(spec), "--output", str(out), "--dry-run"]) == 0
    statuses = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert statuses == ["done", "evaluate", "train"]  # the broken arm failed before making its run folder
    spec.write_text(spec.read_text().replace("nosuchloss", "cosface"))  # the broken arm, fixed, differs: refused
    assert main(["study", str(spec), "--output", str(out), "--threads", "1"]) == 2
    assert "was run with other settings (arm broken)" in capsys.readouterr().err
    spec.write_text(spec.read_text().replace("broken:", "plain:"))  # the same fix as a new arm
    assert main(["study", str(spec), "--output", str(out), "--threads", "1"]) == 0
    assert checkpoint.stat().st_mtime_ns == mtime  # evaluated only
    rows = study.read_results(out / "results.csv")
    assert [r["arm"] for r in rows] == ["arcface", "cosface", "plain"]
    assert "| arcface | 1 |" in capsys.readouterr().out


def _assert_environment_recorded(rows: list[dict[str, str]], threads: str) -> None:
    """Every row carries this interpreter's versions, this checkout's commit, the CPU and the runs' threads."""
    import platform
    import subprocess

    import torch

    head = subprocess.run(["git", "-C", str(Path(study.__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    commit = head.stdout.strip() if head.returncode == 0 else "unknown"
    for row in rows:
        assert (row["torch_version"], row["numpy_version"], row["python_version"]) == (
            torch.__version__, np.__version__, platform.python_version())
        assert row["marginface_commit"] == commit and row["marginface_dirty"] in (("yes", "no") if head.returncode
                                                                                  == 0 else ("",))
        assert row["device"].startswith("cpu (") and row["torch_threads"] == threads


@pytest.mark.slow
def test_a_study_row_reproduces_exactly_on_the_same_environment(tmp_path: Path) -> None:
    """The same spec run twice into two folders: identical figures (every set column) and environment."""
    spec = _spec(tmp_path, {"arcface": ["loss.name=arcface"]})
    for out in ("first", "second"):
        assert main(["study", str(spec), "--output", str(tmp_path / out), "--threads", "1"]) == 0
    first, second = (study.read_results(tmp_path / out / "results.csv") for out in ("first", "second"))
    timing = {"train_wall_s", "eval_wall_s"}
    assert len(first) == 1 and first[0]["held_acc"] != ""
    assert [{k: v for k, v in r.items() if k not in timing} for r in first] == [
        {k: v for k, v in r.items() if k not in timing} for r in second]
    _assert_environment_recorded(first, threads="1")


def test_rows_written_before_the_environment_was_recorded_still_read(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """An old results.csv (no environment columns) is summarised, and kept as it was when a new row joins it."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"preset": "x", "seeds": [0, 1], "arms": {"a": []}, "eval": {"bins": ["lfw.bin"]}}))
    old_header = study.columns(study.load_study(spec))[:-len(study.environment.FIELDS)]
    assert old_header[-1] == "lfw_tar"
    out = tmp_path / "out"
    out.mkdir()
    old = [{"arm": "a", "seed": "0", "steps": "10", "train_wall_s": "60", "eval_wall_s": "5", "lfw_acc": "0.810000",
            "lfw_acc_std": "0.010000", "lfw_tar": "0.200000"}]
    study._write_csv(out / "results.csv", old_header, old)
    assert main(["study", str(spec), "--output", str(out), "--summary"]) == 0
    printed = capsys.readouterr().out
    assert "environment of 1 row(s): not recorded" in printed and "| a | 1 | 81.00 ± 0.00" in printed
    new = old[0] | {"seed": "1", "lfw_acc": "0.830000"} | {f: "x" for f in study.environment.FIELDS}
    study.Study(study.load_study(spec), out)._append(new)
    rows = study.read_results(out / "results.csv")
    assert rows[0] == old[0] | {f: "" for f in study.environment.FIELDS} and rows[1] == new
    assert main(["study", str(spec), "--output", str(out), "--summary"]) == 0
    printed = capsys.readouterr().out
    assert "| a | 2 | 82.00 ± 1.41" in printed and "environment of 1 row(s): not recorded" in printed


def test_the_summary_is_mean_and_sample_std_over_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"preset": "x", "seeds": [0, 1, 2], "arms": {"a": [], "b": []},
                                    "eval": {"bins": ["lfw.bin"]}}))
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.7, 0.9, (2, 3))
    rows = [{"arm": arm, "seed": s, "steps": 10, "lfw_acc": acc[i, s], "lfw_tar": 0.3} for s in range(3)
            for i, arm in enumerate("ab")]
    (tmp_path / "out").mkdir()
    study._write_csv(tmp_path / "out" / "results.csv", study.columns(study.load_study(spec)), rows)
    assert main(["study", str(spec), "--output", str(tmp_path / "out"), "--summary", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["environments"] == [{"environment": "not recorded", "rows": 6}]
    summary = printed["summary"]
    for i, arm in enumerate("ab"):
        row = next(s for s in summary if s["arm"] == arm and s["metric"] == "lfw_acc")
        assert row["seeds"] == 3
        assert row["mean"] == pytest.approx(acc[i].mean(), abs=1e-12)
        assert row["std"] == pytest.approx(acc[i].std(ddof=1), abs=1e-12)


def test_the_table_and_the_sweep_figure_carry_the_seeds_numbers(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"preset": "x", "seeds": [0, 1, 2], "arms": {"m0.2": [], "m0.5": [], "m0.8": []},
                                    "eval": {"bins": ["lfw.bin", "cfp_fp.bin"]}}))
    rng = np.random.default_rng(1)
    acc = rng.uniform(0.6, 0.9, (3, 2, 3))  # arm, set, seed
    rows = [{"arm": arm, "seed": seed, "steps": 10, "train_wall_s": 60 * (i + 1) + seed, "lfw_acc": acc[i, 0, seed],
             "cfp_fp_acc": acc[i, 1, seed]} for seed in range(3) for i, arm in enumerate(["m0.2", "m0.5", "m0.8"])]
    (tmp_path / "out").mkdir()
    study._write_csv(tmp_path / "out" / "results.csv", study.columns(study.load_study(spec)), rows)
    figure = tmp_path / "sweep.png"
    argv = ["study", str(spec), "--output", str(tmp_path / "out"), "--summary", "--figure", str(figure),
            "--figure-xlabel", "m"] + [f"--figure-arm=m{m}={m}" for m in ("0.2", "0.5", "0.8")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    m05 = next(line for line in out.splitlines() if line.startswith("| m0.5 | 3 |"))
    assert m05.endswith("| 2.0 |")  # m0.5's training: 120, 121, 122 s -> 2.0 min
    assert Image.open(figure).size[0] > 600
    with open(figure.with_suffix(".csv")) as handle:
        got = list(csv.DictReader(handle))
    assert [(r["set"], r["label"]) for r in got] == [(s, m) for s in ("lfw", "cfp_fp") for m in ("0.2", "0.5", "0.8")]
    for r in got:
        i, j = ["0.2", "0.5", "0.8"].index(r["label"]), ["lfw", "cfp_fp"].index(r["set"])
        assert float(r["acc_mean"]) == pytest.approx(acc[i, j].mean(), abs=1e-9)
        assert float(r["acc_std"]) == pytest.approx(acc[i, j].std(ddof=1), abs=1e-9)
    assert main(argv[:-1] + ["--figure-arm=m0.9"]) == 2
    assert "no results for arm(s) ['m0.9']" in capsys.readouterr().err
    # the tie rule: |mean difference| against the larger of the two sample stds
    assert main(argv[:4] + ["--summary", "--compare", "m0.5,m0.2", "--json"]) == 0
    got = {c["metric"]: c for c in json.loads(capsys.readouterr().out)}
    diff, spread = acc[1, 0].mean() - acc[0, 0].mean(), max(acc[1, 0].std(ddof=1), acc[0, 0].std(ddof=1))
    assert got["lfw_acc"]["difference"] == pytest.approx(diff, abs=1e-9)
    assert got["lfw_acc"]["spread"] == pytest.approx(spread, abs=1e-9)
    assert got["lfw_acc"]["verdict"] == ("tie" if abs(diff) <= spread else "m0.5 ahead" if diff > 0 else "m0.2 ahead")
    # the stated test: Welch's p per comparison, Holm-corrected over every comparison of the call (2 pairs x 2 sets)
    assert main(argv[:4] + ["--summary", "--compare", "m0.5,m0.2", "--compare", "m0.8,m0.5", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [(f["a"], f["metric"]) for f in found] == [(a, m) for a in ("m0.5", "m0.8") for m in ("lfw_acc",
                                                                                                 "cfp_fp_acc")]
    naive = []
    for f in found:
        i, j, k = ["0.2", "0.5", "0.8"].index(f["a"][1:]), ["0.2", "0.5", "0.8"].index(f["b"][1:]), ["lfw_acc",
                                                                                                    "cfp_fp_acc"]
        x, y = acc[i, k.index(f["metric"])], acc[j, k.index(f["metric"])]
        var = x.var(ddof=1) / 3 + y.var(ddof=1) / 3
        assert f["welch_t"] == pytest.approx((x.mean() - y.mean()) / np.sqrt(var), rel=1e-9)
        assert f["welch_df"] == pytest.approx(var**2 / ((x.var(ddof=1) / 3) ** 2 / 2 + (y.var(ddof=1) / 3) ** 2 / 2))
        naive.append(f["p"])
        assert f["comparisons"] == 4 and f["interval_95"][0] <= f["difference"] <= f["interval_95"][1]
    order = np.argsort(naive)
    holm = np.maximum.accumulate(np.minimum(1.0, (4 - np.arange(4)) * np.array(naive)[order]))
    assert [f["p_holm"] for f in np.array(found)[order]] == pytest.approx(list(holm))
    assert main(argv[:4] + ["--summary", "--compare", "m0.5,m0.2", "--compare", "m0.8,m0.5"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("4 comparison(s) tested in this call; Welch's t-test")
    assert f"p_holm {found[0]['p_holm']:.3g} of 4" in printed.splitlines()[1]
    one_seed = [r for r in rows if r["arm"] != "m0.2" or r["seed"] == 0]
    study._write_csv(tmp_path / "out" / "results.csv", study.columns(study.load_study(spec)), one_seed)
    assert main(argv[:4] + ["--summary", "--compare", "m0.5,m0.2", "--compare", "m0.8,m0.5", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)  # strict JSON: no test is null, not NaN
    assert [(f["p"] is None, f["p_holm"] is None, f["comparisons"]) for f in found] == [(True, True, 2)] * 2 + [
        (False, False, 2)] * 2
    assert main(argv[:4] + ["--summary", "--compare", "m0.5,m0.2"]) == 0
    assert "0 comparison(s) tested" in capsys.readouterr().out
    assert study.compare(one_seed, "m0.5", "m0.2", "lfw_acc").verdict == "cannot tell (one seed: no spread)"
    assert main(argv[:4] + ["--summary", "--compare", "m0.5"]) == 2
    assert "give two arms as A,B" in capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    ({"arms": {}}, "has no arms"), ({"seeds": [1, 1]}, "without repeats"), ({"eval": {}}, "evaluates nothing"),
    ({"arms": {"a/b": []}}, "plain folder name"), ({"arms": {"a": ["loss.name"]}}, "is not key=value"),
    ({"colour": 1}, "unknown key"), ({"eval": {"bins": ["x/lfw.bin", "y/lfw.bin"]}}, "share a name")])
def test_bad_specs_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    spec = {"preset": "x", "seeds": [0], "arms": {"a": []}, "eval": {"bins": ["lfw.bin"]}} | change
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=message):
        study.load_study(path)


STUDIES = sorted((Path(__file__).resolve().parents[2] / "configs" / "study").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_committed_studies_parse_and_every_arm_is_a_valid_config(path: Path) -> None:
    """Every arm's overrides build a config (loss names and parameters checked at config time)."""
    from marginface.training.config import load_config
    from marginface.training.presets import resolve_config

    spec = study.load_study(path)
    root = Path(__file__).resolve().parents[2]
    for run in study.plan(spec, "out"):
        config = load_config(resolve_config(str(root / spec.preset)), [*study.train_command(spec, run)[4:]])
        assert config.seed == run.seed and config.output_dir == str(run.run_dir)


def test_overrides_from_the_command_line_join_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(STUDIES[0])
    assert main(["study", spec, "--output", "out", "--dry-run", "--json", "--override", "model.backbone=iresnet50",
                 "--override", "device=cuda"]) == 0
    commands = [p["command"] for p in json.loads(capsys.readouterr().out)]
    assert commands and all("model.backbone=iresnet50 device=cuda loss.name=" in c for c in commands)


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("cuda:1", "cuda:1"), ("auto", "cpu")])
def test_runs_are_evaluated_on_the_device_they_trained_on(tmp_path: Path, device: str, expected: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = study.Run("a", 0, tmp_path, tmp_path / "a_s0.log")
    (tmp_path / "config.json").write_text(json.dumps({"device": device, "steps": 2}))
    assert study.eval_device(run) == expected


def test_committed_studies_exist() -> None:
    assert {p.stem for p in STUDIES} >= {"celeba299_losses", "celeba299_arcface_margins", "celeba299_tiny28_losses",
                                        "celeba299_tiny28_losses_seeds34"}


def test_the_eval_json_is_read_from_the_end_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text('$ marginface train ...\nstep 1\n$ marginface eval ...\n'
                   '{\n  "model": "m",\n  "verification": []\n}\na warning printed at exit\n')
    assert study._last_json(log) == {"model": "m", "verification": []}
    log.write_text("$ marginface eval ...\nTraceback ...\n")
    with pytest.raises(ValueError, match="no JSON result"):
        study._last_json(log)


@pytest.mark.slow
def test_an_as_is_arm_with_steps_0_evaluates_the_starting_model(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A fine-tuning study's "no fine-tuning" arm: steps=0 checkpoints the init_from model, evaluated like a run."""
    from safetensors.torch import load_file

    start = tmp_path / "start"
    assert main(["train", "--config", "synthetic_mobilefacenet_arcface", *TINY, f"output_dir={start}"]) == 0
    init = start / "checkpoints" / "step_00000002"
    capsys.readouterr()
    spec = _spec(tmp_path, {"as_is": [f"model.init_from={init}", "steps=0"],
                            "tuned": [f"model.init_from={init}", "loss.name=cosface", "model.init_centres=class_means",
                                      "model.freeze_bn=true"]})
    out = tmp_path / "out"
    assert main(["study", str(spec), "--output", str(out), "--threads", "1"]) == 0
    rows = {r["arm"]: r for r in study.read_results(out / "results.csv")}
    assert (rows["as_is"]["steps"], rows["tuned"]["steps"]) == ("0", "2")
    saved = load_file(str(out / "as_is_s0" / "checkpoints" / "step_00000000" / "model.safetensors"))
    original = load_file(str(init / "model.safetensors"))
    assert all(torch_equal(saved[k], original[k]) for k in original if k.startswith("backbone."))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(init / "model.safetensors"), "--bins", str(tmp_path / "held.bin"),
                 "--json", "--roc", "", "--no-flip", "--device", "cpu"]) == 0
    (tmp_path / "direct.log").write_text("\n" + capsys.readouterr().out)
    direct = study._last_json(tmp_path / "direct.log")
    assert float(rows["as_is"]["held_acc"]) == pytest.approx(direct["verification"][0]["accuracy"], abs=1e-6)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) and key != "params" else {prefix + key: value}
    return out


def test_the_finetune_studys_arms_differ_as_its_protocol_says() -> None:
    """configs/study/celeba299_ms1m_finetune.yaml (docs/results.md): the control differs from the triplet arm in
    the loss only, the margin arms from each other in the loss only, and every run starts from the MS1M model."""
    from marginface.training.config import config_to_dict, load_config
    from marginface.training.presets import resolve_config

    root = Path(__file__).resolve().parents[2]
    spec = study.load_study(root / "configs" / "study" / "celeba299_ms1m_finetune.yaml")
    assert spec.seeds == [0, 1, 2, 3, 4] and len(spec.arms) == 7
    configs = {}
    for run in study.plan(spec, "out"):
        if run.seed == 0:
            config = load_config(resolve_config(str(root / spec.preset)), study.train_command(spec, run)[4:])
            configs[run.arm] = _flat(config_to_dict(config))
            configs[run.arm].pop("output_dir")

    def differences(a: str, b: str) -> set[str]:
        return {k for k in configs[a] if configs[a][k] != configs[b][k]}

    assert differences("triplet", "arcface_tripletopt") == {"loss.name", "loss.params", "model.init_centres"}
    for arm in ("cosface", "sphereface", "curricularface"):
        assert differences(arm, "arcface") <= {"loss.name", "loss.params"}, arm
    assert differences("arcface", "arcface_tripletopt") == {"optim.lr", "optim.momentum"}
    assert configs["as_is"]["steps"] == 0 and {c["steps"] for a, c in configs.items() if a != "as_is"} == {200}
    assert all(c["model.init_from"].endswith("insightface_mobilefacenet_y1/model") and c["model.freeze_bn"]
               and c["data.sampler"] == "pk" for c in configs.values())
    assert {a for a, c in configs.items() if c["model.init_centres"] == "class_means"} == {
        "arcface", "cosface", "sphereface", "curricularface", "arcface_tripletopt"}
