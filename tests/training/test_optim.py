"""Optimizer recipes: parameter groups, AdamW against a float64 formula, the SGD default unchanged, AdamW runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from marginface import backbones, losses
from marginface.heads import SparseRowSGD
from marginface.training.config import ConfigError, OptimConfig, load_config
from marginface.training.optim import build_optimizer, no_weight_decay_names, parameter_groups
from marginface.training.trainer import FaceModel, Trainer, read_log

TINY = [
    "model.backbone=mobilefacenet", "model.embedding_size=32", "data.synthetic_images_per_identity=2",
    "data.synthetic_identities=6", "batch_size=4", "log_every=1", "device=cpu", "deterministic=true",
    "optim.lr=0.05", "checkpoint_every=100",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny batches: a second OpenMP thread only spins on a shared 2-core runner (see tests/backbones/conftest.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"output_dir={tmp_path}", *extra])


def _face_model(name: str) -> nn.Module:
    """Backbone + dense head on the meta device (names and shapes only)."""
    with torch.device("meta"):
        backbone = backbones.create(name, embedding_size=64)
        loss = losses.create("arcface", embedding_size=64, num_classes=10)
    from marginface.heads import create_head

    return FaceModel(backbone, create_head("dense", loss))


def _expected_undecayed(model: nn.Module) -> set[str]:
    """Independent of ndim: by module type and name (norms, PReLU, biases, the ViT tokens)."""
    names = set()
    plain_types = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU)
    for prefix, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{prefix}.{pname}"
            if isinstance(module, plain_types) or pname == "bias" or pname in ("pos_embed", "mask_token"):
                names.add(full)
    return names


@pytest.mark.parametrize("name", ["vit_t", "mobilefacenet", "iresnet18"])
def test_weights_mode_decays_matrices_kernels_and_centres_only(name):
    model = _face_model(name)
    groups = parameter_groups(model, 0.1, "weights")
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for p in groups[0]["params"]}
    plain = {by_id[id(p)] for p in groups[1]["params"]}
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.1, 0.0)
    assert decayed | plain == set(by_id.values()) and not decayed & plain
    assert plain == _expected_undecayed(model)
    assert "head.loss.weight" in decayed  # the class centres are decayed, as in every recipe
    if name == "vit_t":
        assert {"backbone.pos_embed", "backbone.mask_token"} <= plain
        assert no_weight_decay_names(model) == {"backbone.pos_embed", "backbone.mask_token"}
        assert "backbone.blocks.0.attn.qkv.weight" in decayed and "backbone.patch_embed.weight" in decayed


def test_all_mode_is_one_group_over_model_parameters():
    model = _face_model("mobilefacenet")
    (group,) = parameter_groups(model, 5e-4, "all")
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]


def test_no_weight_decay_naming_a_missing_parameter_is_an_error():
    class Bad(nn.Linear):
        def no_weight_decay(self):
            return {"pos_embedding"}

    with pytest.raises(ValueError, match="pos_embedding"):
        parameter_groups(Bad(2, 2), 0.1, "weights")


def _adamw_float64(p, grads, lr, betas, eps, wd):
    """AdamW (Loshchilov & Hutter, Alg. 2, as torch.optim.AdamW parametrises it) in float64."""
    p, m, v = p.double().clone(), torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_adamw_steps_match_the_float64_formula_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))
    config = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1, weight_decay_params="weights", betas=[0.8, 0.95],
                         eps=1e-6)
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, torch.optim.AdamW)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: [torch.randn_like(p) for _ in range(3)] for n, p in model.named_parameters()}
    for step in range(3):
        for n, p in model.named_parameters():
            p.grad = grads[n][step].clone()
        optimizer.step()
    for n, p in model.named_parameters():
        wd = 0.1 if n == "0.weight" else 0.0  # only the Linear's matrix is decayed
        expected = _adamw_float64(start[n], grads[n], 1e-2, (0.8, 0.95), 1e-6, wd)
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-7, msg=n)


def _old_optimizer(trainer: Trainer) -> torch.optim.Optimizer:
    """The optimizer the trainer built before optim.name existed (commit 4b81758)."""
    o = trainer.config.optim
    return SparseRowSGD(trainer.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


@pytest.mark.parametrize("head", ["dense", "partial_fc"])
def test_sgd_default_trains_bit_identically_to_the_old_optimizer(tmp_path, monkeypatch, head):
    extra = ["steps=3", f"loss.head={head}", "loss.sample_rate=0.5", "optim.warmup_steps=2"]
    new = Trainer(tiny_config(tmp_path / "new", *extra)).setup()
    assert new.optimizer.state_dict()["param_groups"][0]["params"] == list(range(len(list(new.model.parameters()))))
    new.fit()
    monkeypatch.setattr(Trainer, "_build_optimizer", _old_optimizer)
    old = Trainer(tiny_config(tmp_path / "old", *extra)).setup()
    assert old.optimizer.state_dict()["param_groups"] == new.optimizer.state_dict()["param_groups"]
    old.fit()
    a, b = new.model.state_dict(), old.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(tmp_path / "new")["loss"] == read_log(tmp_path / "old")["loss"]


@pytest.mark.slow
def test_adamw_with_partial_fc_trains_moves_every_centre_and_resumes_exactly(tmp_path):
    extra = ["steps=4", "checkpoint_every=2", "optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.1",
             "optim.weight_decay_params=weights", "optim.schedule=poly", "optim.warmup_steps=1", "grad_clip=5.0",
             "loss.name=cosface", "loss.head=partial_fc", "loss.sample_rate=0.5"]
    trainer = Trainer(tiny_config(tmp_path / "straight", *extra)).setup()
    start = trainer.loss.weight.detach().clone()
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and len(trainer.optimizer.param_groups) == 2
    trainer.fit()
    assert not trainer.loss.weight.grad.is_sparse  # AdamW gets Partial FC's dense gradient
    # arcface_torch's behaviour: every centre takes an AdamW step each step (decay + first moment), sampled or not
    assert (trainer.loss.weight.detach() != start).all(dim=1).all()
    lrs = [v for _, v in read_log(tmp_path / "straight")["lr"]]
    assert lrs == pytest.approx([0.01, 0.01, 0.01 * (2 / 3) ** 2, 0.01 * (1 / 3) ** 2], rel=1e-7)  # poly, power 2
    # resume from the step-2 checkpoint: same weights at step 4 (AdamW's moments and step count restored)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_00000004")
    Trainer(tiny_config(resumed_dir, *extra)).setup().fit()
    final = "checkpoints/step_00000004/model.safetensors"
    a, b = load_file(str(tmp_path / "straight" / final)), load_file(str(resumed_dir / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("override, field", [
    ("optim.name=lamb", "optim.name"),
    ("optim.weight_decay_params=norms", "optim.weight_decay_params"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.eps=0", "optim.eps"),
    ("optim.schedule=exp", "optim.schedule"),
    ("optim.power=0", "optim.power"),
    ("optim.min_lr=1", "optim.min_lr"),
])
def test_bad_optimizer_settings_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, [override])


def test_combinations_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="loss.fused_update.*optim.name=sgd"):
        load_config(None, ["loss.head=chunked", "loss.fused_update=true", "optim.name=adamw"])
    with pytest.raises(ConfigError, match="optim.milestones"):
        load_config(None, ["optim.schedule=cosine", "optim.milestones=[10]"])
    with pytest.raises(ConfigError, match="optim.warmup_steps"):
        load_config(None, ["optim.schedule=poly", "steps=10", "optim.warmup_steps=10"])


def test_vit_preset_is_arcface_torchs_recipe():
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "webface42m_vit_t_cosface.yaml")
    o = config.optim
    assert (o.name, o.lr, o.weight_decay, o.schedule, o.power, o.warmup_steps) == ("adamw", 1e-3, 0.1, "poly", 2, 4)
    assert (config.epochs, config.batch_size, config.grad_clip, config.loss.sample_rate) == (40, 4096, 5.0, 0.3)
    assert config.model.params == {"drop_path": 0.05, "mask_ratio": 0.0}


def test_model_params_reach_the_backbone_and_its_model_card():
    """model.params (e.g. a ViT without masking) must be in the card, or the weights would not load back."""
    from marginface.inference.card import training_card

    config = load_config(None, ["model.backbone=vit_t", "model.params={drop_path: 0.05, mask_ratio: 0.0}"])
    card = training_card(config, 10, 100, {}, {})
    assert card.backbone_kwargs == {"output": "E", "dropout": 0.0, "drop_path": 0.05, "mask_ratio": 0.0}
    with torch.device("meta"):
        model = backbones.create(card.backbone, embedding_size=card.embedding_size, **card.backbone_kwargs)
    assert model.mask_token is None


@pytest.mark.slow
def test_vit_t_trains_with_its_recipe(tmp_path):
    """ViT-T, the celeba299 preset's optimizer and model settings, two steps on synthetic faces."""
    preset = load_config(Path(__file__).resolve().parents[2] / "configs" / "celeba299_vit_t_arcface.yaml")
    o = preset.optim
    extra = ["model.backbone=vit_t", "model.params={drop_path: 0.05, mask_ratio: 0.0}", "steps=2",
             f"optim.name={o.name}", f"optim.lr={o.lr}", f"optim.weight_decay={o.weight_decay}",
             f"optim.weight_decay_params={o.weight_decay_params}", f"optim.schedule={o.schedule}",
             "optim.warmup_steps=1", f"grad_clip={preset.grad_clip}"]
    trainer = Trainer(tiny_config(tmp_path, *extra)).setup()
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert any(p is trainer.backbone.pos_embed for p in groups[1]["params"])
    assert trainer.backbone.mask_token is None
    trainer.fit()
    losses_logged = [v for _, v in read_log(tmp_path)["loss"]]
    assert len(losses_logged) == 2 and all(map(torch.isfinite, torch.tensor(losses_logged)))


def _sharded_adamw_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from marginface.training.distributed import shutdown

    overrides = ["data.synthetic_identities=8", "batch_size=8", "steps=2", "loss.name=cosface",
                 "loss.head=partial_fc", "loss.sample_rate=0.5", "loss.sharded=true", "optim.name=adamw",
                 "optim.lr=0.01", "optim.weight_decay=0.1", f"output_dir={run_dir}"]
    trainer = Trainer(tiny_config(Path(run_dir), *overrides)).setup()
    start = trainer.loss.weight.detach().clone()
    trainer.fit()
    # each rank's shard got a dense gradient and every one of its centres took the AdamW steps
    assert trainer.loss.weight.shape[0] == 4 and not trainer.loss.weight.grad.is_sparse
    assert (trainer.loss.weight.detach() != start).all(dim=1).all()
    shutdown()


@pytest.mark.slow
def test_adamw_trains_sharded_partial_fc_centres_over_two_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_sharded_adamw_worker, args=(2, port, str(tmp_path)), nprocs=2)
    losses_logged = [v for _, v in read_log(tmp_path)["loss"]]
    assert len(losses_logged) == 2 and all(map(torch.isfinite, torch.tensor(losses_logged)))
