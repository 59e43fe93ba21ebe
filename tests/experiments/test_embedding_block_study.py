"""Issue 30's CPU variant: the embedding block of a MobileFaceNet fine-tuned on cached trunk features."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from marginface import backbones
from marginface.experiments import embedding_block_study as ebs
from marginface.experiments import study
from marginface.training.finetune import class_mean_centres

SPEC = Path(__file__).resolve().parents[2] / "configs" / "study" / "celeba299_ms1m_embedding_block.yaml"
WHOLE = SPEC.with_name("celeba299_ms1m_finetune.yaml")


def _model(seed: int = 0) -> nn.Module:
    """A random MobileFaceNet (D 128, as the real one) with trained-looking BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = backbones.create("mobilefacenet", embedding_size=128)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _features(num_images: int, num_classes: int, seed: int = 0) -> ebs.Features:
    """Synthetic cached training features (two views), one row per image, labels ``i % num_classes``."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(num_images, 2, 128, 7, 7, generator=g).numpy()
    labels = np.arange(num_images, dtype=np.int64) % num_classes
    return ebs.Features(values, np.arange(num_images), labels, 0.0, num_classes)


def _config(arm: str = "arcface", *extra: str):
    spec = study.load_study(SPEC)
    spec = replace(spec, overrides=[*spec.overrides, "steps=3", "optim.milestones=[2]", *extra])
    return ebs.arm_config(spec, arm, 0)


def test_the_spec_runs_the_whole_network_arms_verbatim_with_ten_seeds():
    variant, whole = study.load_study(SPEC), study.load_study(WHOLE)
    assert variant.runner == "embedding_block" and whole.runner == "trainer"
    assert variant.arms == whole.arms and variant.preset == whole.preset and variant.bins == whole.bins
    assert variant.overrides == whole.overrides and not variant.flip and variant.far == whole.far
    assert variant.seeds == list(range(10))


def test_an_unknown_runner_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("runner: gpu\npreset: x\narms: {a: []}\neval: {bins: [x.bin]}\n")
    with pytest.raises(ValueError, match="runner 'gpu' is not one of"):
        study.load_study(path)


@torch.no_grad()
def test_the_cached_path_equals_the_full_forward_for_both_views(tmp_path):
    model = _model()
    images = _images(5)
    trunk, block = ebs.split_backbone(model)
    values, _ = ebs.extract(trunk, lambda a, b: images[a:b], 5, 2, tmp_path / "t.npy", {"model_sha256": "x"}, "t")
    assert values.shape == (5, 2, 128, 7, 7)
    full, mirrored = model(images), model(torch.flip(images, dims=[-1]))
    torch.testing.assert_close(block(torch.from_numpy(values[:, 0])), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block(torch.from_numpy(values[:, 1])), mirrored, rtol=1e-5, atol=1e-5)


def test_a_cache_resumes_and_refuses_another_model(tmp_path, monkeypatch):
    trunk, _ = ebs.split_backbone(_model())
    images, calls = _images(3), []

    def decode(a, b):
        calls.append((a, b))
        return images[a:b]

    monkeypatch.setattr(ebs, "EXTRACT_BATCH", 2)
    first, _ = ebs.extract(trunk, decode, 3, 1, tmp_path / "t.npy", {"model_sha256": "a"}, "t")
    calls.clear()
    again, _ = ebs.extract(trunk, decode, 3, 1, tmp_path / "t.npy", {"model_sha256": "a"}, "t")
    assert calls == [] and np.array_equal(first, again)  # done: nothing decoded again
    with pytest.raises(ValueError, match=r"t\.npy was made with other model_sha256"):
        ebs.extract(trunk, decode, 3, 1, tmp_path / "t.npy", {"model_sha256": "b"}, "t")


def test_flip_test_time_augmentation_is_refused(tmp_path):
    spec = replace(study.load_study(SPEC), flip=True)
    with pytest.raises(ValueError, match=r"flip off .* set eval: \{flip: false\}"):
        ebs.run_study(spec, tmp_path)


def test_a_backbone_without_conv_sep_is_refused():
    with pytest.raises(ValueError, match="has no conv1, conv2_dw, blocks, conv_sep, head: use model.backbone"):
        ebs.split_backbone(nn.Linear(2, 2))


def test_a_missing_eval_set_is_named(tmp_path):
    trunk, _ = ebs.split_backbone(_model())
    with pytest.raises(FileNotFoundError, match="eval set .*nope.bin does not exist"):
        ebs.bin_features(tmp_path / "nope.bin", trunk, tmp_path, "x")


@torch.no_grad()
def test_class_means_of_the_cached_features_match_a_float64_loop():
    _, block = ebs.split_backbone(_model())
    train = _features(12, 5)
    got = class_mean_centres(block, ebs._ClassFeatures(train, 5), 5, batch_size=4)
    block = block.double().eval()
    for c in range(5):
        total = torch.zeros(128, dtype=torch.float64)
        for i in np.flatnonzero(train.labels == c):
            e = block(torch.from_numpy(train.values[i, :1]).double())[0]
            total += e / e.norm()
        torch.testing.assert_close(got[c].double(), total / total.norm(), rtol=1e-5, atol=1e-6)


def test_a_run_is_reproducible_bit_for_bit_and_the_trunk_gets_no_update():
    model = _model()
    trunk, start = ebs.split_backbone(model)
    trunk_before = copy.deepcopy(trunk.state_dict())
    config, train = _config(), _features(72, 18)

    def run(seed_config):
        block = copy.deepcopy(start)
        loss, losses = ebs.train_block(seed_config, block, train, 18)
        return block.state_dict(), loss.state_dict(), losses

    a, b, other = run(config), run(config), run(replace(config, seed=1))
    assert len(a[2]) == 3 and all(np.isfinite(a[2]))
    assert a[2] == b[2]
    for x, y in ((a[0], b[0]), (a[1], b[1])):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert a[2] != other[2]  # another seed: other batches
    assert not torch.equal(a[0]["conv_sep.0.weight"], start.state_dict()["conv_sep.0.weight"])
    assert torch.equal(a[0]["head.bn.running_mean"], start.state_dict()["head.bn.running_mean"])  # frozen BN
    assert all(torch.equal(v, trunk_before[k]) for k, v in trunk.state_dict().items())  # the trunk: untouched


@pytest.mark.parametrize("arm", ["cosface", "sphereface", "curricularface", "triplet", "arcface_tripletopt"])
def test_every_trained_arm_of_the_spec_runs(arm):
    _, start = ebs.split_backbone(_model())
    loss, losses = ebs.train_block(_config(arm), copy.deepcopy(start), _features(72, 18), 18)
    assert len(losses) == 3 and all(np.isfinite(losses))
    if arm != "triplet":
        assert loss.weight.shape == (18, 128)


def test_results_csv_has_the_study_columns_and_is_read_by_summary_and_compare(tmp_path):
    _, start = ebs.split_backbone(_model())
    issame = np.tile([True, False], 10)
    sets = {"toy": ebs.Features(torch.randn(40, 1, 128, 7, 7).numpy(), np.arange(40), issame, 0.0)}
    spec = study.StudySpec(preset="p", arms={"a": [], "b": []}, seeds=[0, 1, 2], bins=["toy.bin"])
    rows = []
    for arm in ("a", "b"):
        for seed in range(3):
            block = copy.deepcopy(start)
            with torch.no_grad():
                block.head.fc.weight.add_(0.05 * seed + (0.3 if arm == "b" else 0.0))
            results = ebs.evaluate(block, sets, 1e-3)
            rows.append({k: str(v) for k, v in ebs.result_row(arm, seed, 3, 1.0, 0.5, results, 1e-3).items()})
    ebs._write_results(spec, tmp_path / "results.csv", rows[::-1])
    read = study.read_results(tmp_path / "results.csv")
    assert list(read[0]) == study.columns(spec) and [r["seed"] for r in read] == ["0", "0", "1", "1", "2", "2"]
    c = study.compare(read, "a", "b", "toy_acc")
    assert len(c.a.values) == 3 and 0.0 <= c.a.mean <= 1.0
    assert "| a | 3 |" in study.summary_table(read, ["toy"])


@pytest.mark.slow
def test_the_as_is_embeddings_on_real_faces_equal_what_marginface_eval_computes(shared_data, tmp_path):
    """The y1 model through the study's path (init_from + cache + block) vs ``marginface eval``'s path (the MXNet
    files with their own normalisation, ``embed_tensor`` flip off) on small_lfw.bin's 20 stored faces."""
    from marginface.data.bins import load_verification_bin
    from marginface.evaluation.embed import embed_batches, embed_tensor, load_backbone

    y1 = shared_data.parent / "models" / "insightface_mobilefacenet_y1" / "model"
    if not (y1.parent / "model-0000.params").is_file():
        pytest.skip("../shared/models/insightface_mobilefacenet_y1 is absent")
    torch.set_num_threads(1)
    config = _config("as_is", f"model.init_from={y1}")
    trunk, block = ebs.split_backbone(ebs.load_starting_model(config))
    digest = ebs.fingerprint(ebs.model_files(y1))
    small = shared_data / "bins" / "small_lfw.bin"
    feats = ebs.bin_features(small, trunk, tmp_path, digest)
    ours = embed_batches(block, [torch.from_numpy(feats.values[:, 0])], flip=False)[feats.rows]
    images, _ = load_verification_bin(small)
    theirs = embed_tensor(load_backbone(None, str(y1), None), images, flip=False)  # as `marginface eval`
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    with pytest.raises(ValueError, match="made with other model_sha256"):
        ebs.bin_features(small, trunk, tmp_path, "0" * 64)


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiny_study(tmp_path: Path, model: Path, bins: list[str]) -> study.StudySpec:
    """A study of the variant's runner on 3 identities x 2 PNG faces and tiny .bin sets, from ``model``."""
    from marginface.data.bins import write_verification_bin

    for i in range(6):
        face = tmp_path / "train" / f"id{i // 2}" / f"{i}.png"
        face.parent.mkdir(parents=True, exist_ok=True)
        face.write_bytes(_png(i))
    for n, name in enumerate(bins):
        write_verification_bin(tmp_path / name, [_png(100 * n + i) for i in range(8)], [True, False, True, False])
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        f"data: {{source: folder, path: {tmp_path / 'train'}, sampler: pk, pk_images_per_identity: 4, "
        "num_workers: 0}\n"
        f"model: {{backbone: mobilefacenet, embedding_size: 128, init_from: {model}, init_centres: class_means, "
        "freeze_bn: true}\nloss: {name: arcface, params: {scale: 64.0, margin: 0.5}}\n"
        "optim: {lr: 0.001, momentum: 0.9, weight_decay: 0.0005, milestones: [1]}\n"
        "validation: {bins: []}\nbatch_size: 8\nsteps: 2\ndevice: cpu\n")
    return study.StudySpec(preset=str(preset), arms={"as_is": ["steps=0", "model.init_centres=random"],
                                                     "arcface": []}, seeds=[0, 1],
                           bins=[str(tmp_path / b) for b in bins], flip=False)


@pytest.mark.slow
def test_run_study_end_to_end_resumes_adds_a_set_without_retraining_and_refuses_another_models_cache(tmp_path):
    from marginface.training.config import load_config
    from marginface.training.trainer import Trainer

    torch.set_num_threads(1)
    models = []
    for seed in (0, 1):  # two "trained models": 1-step ArcFace runs of two random MobileFaceNets
        run = tmp_path / f"model{seed}"
        Trainer(load_config(None, ["model.backbone=mobilefacenet", "model.embedding_size=128", "steps=1",
                                   f"seed={seed}", "batch_size=4", "device=cpu", "data.synthetic_identities=4",
                                   "data.synthetic_images_per_identity=2", "loss.name=arcface",
                                   "checkpoint_every=1", f"output_dir={run}"])).setup().fit()
        models.append(run / "checkpoints" / "step_00000001")
    out = tmp_path / "out"
    assert ebs.run_study(_tiny_study(tmp_path, models[0], ["a.bin"]), out) == []
    rows = study.read_results(out / "results.csv")
    assert [(r["arm"], r["seed"]) for r in rows] == [("as_is", "0"), ("arcface", "0"), ("as_is", "1"),
                                                     ("arcface", "1")]
    assert list(rows[0]) == study.columns(_tiny_study(tmp_path, models[0], ["a.bin"])) and rows[1]["steps"] == "2"
    weights = out / "runs" / "arcface_s1.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ebs.run_study(_tiny_study(tmp_path, models[0], ["a.bin", "b.bin"]), out) == []
    again = study.read_results(out / "results.csv")
    assert weights.stat().st_mtime_ns == stamp  # the new set was evaluated from the saved weights
    assert all(r["b_acc"] for r in again) and [r["a_acc"] for r in again] == [r["a_acc"] for r in rows]
    with pytest.raises(ValueError, match="made with other model_sha256"):
        ebs.run_study(_tiny_study(tmp_path, models[1], ["a.bin", "b.bin"]), out)
