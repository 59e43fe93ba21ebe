"""ShardedHead: a 2-process gloo run equals the single-process dense result (loss, gradients, state)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from marginface import losses
from marginface.heads import DenseHead, ShardedHead, create_head, shard_range
from tests.heads.helpers import assert_close, assert_same_result, batch, build, run, state
from tests.heads.test_partial_fc import sub_loss
from tests.losses.cases import AMLFS_ARC_FOCAL

WORLD, EMBED, CLASSES, PER_RANK, CHUNK = 2, 8, 23, 5, 4  # 23 classes: uneven shards (12, 11)
# (name, params, sample_rate, steps): full shards over two steps (running state), Partial FC over one.
CONFIGS = {
    "arcface": ("arcface", {}, 1.0, 2),
    "sphereface": ("sphereface", {"lambda_base": 0.0, "lambda_min": 0.0}, 1.0, 1),
    "curricularface": ("curricularface", {}, 1.0, 2),
    "softmax": ("softmax", {}, 1.0, 1),
    "adacos": ("adacos", {}, 1.0, 2),
    "magface": ("magface", {}, 1.0, 1),
    "arcface-pfc": ("arcface", {}, 0.5, 1),
    "softmax-pfc": ("softmax", {}, 0.5, 1),
    "amlfs": ("amlfs", AMLFS_ARC_FOCAL, 1.0, 1),
}


# Fused centre update on each shard (fuse_optimizer) over three steps; in the third every class belongs to rank 0,
# so rank 1 holds no target row.
FUSED = {"arcface-fused": ("arcface", {}), "curricularface-fused": ("curricularface", {})}
FUSED_HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
FUSED_STEPS = 3


def fused_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, labels = batch(EMBED, CLASSES, batch_size=WORLD * PER_RANK, seed=step + 1)
    if step == 2:
        labels = labels % shard_range(CLASSES, WORLD, 0)[1]
    return x, labels


def shard_of(name: str, params: dict, full: losses.MarginLoss, start: int, end: int) -> losses.MarginLoss:
    """Rank's loss: rows (and bias) [start, end) of ``full``, every other buffer copied."""
    shard = losses.create(name, embedding_size=EMBED, num_classes=end - start, **params)
    shard.load_state_dict({k: (v[start:end] if k in ("weight", "bias") and v.dim() > 0 else v)
                           for k, v in full.state_dict().items()})
    return shard


def _worker(rank: int, port: int, outdir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        start, end = shard_range(CLASSES, WORLD, rank)
        results = {}
        for key, (name, params, rate, steps) in CONFIGS.items():
            shard = shard_of(name, params, build(name, params, EMBED, CLASSES), start, end)
            head = ShardedHead(shard, CLASSES, chunk_size=CHUNK, sample_rate=rate, seed=11)
            for step in range(steps):
                x, labels = batch(EMBED, CLASSES, batch_size=WORLD * PER_RANK, seed=step + 1)
                mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
                value, grads = run(head, shard, x[mine], labels[mine])
                out = {"value": value, "index": head.last_index, **state(shard)}
                out.update({f"grad.{k}": g for k, g in grads.items() if g is not None})
                results.update({f"{key}/{step}/{k}": v for k, v in out.items()})
        results.update(_fused_runs(rank, start, end))
        torch.save(results, Path(outdir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _fused_runs(rank: int, start: int, end: int) -> dict[str, torch.Tensor]:
    results = {}
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for key, (name, params) in FUSED.items():
        shard = shard_of(name, params, build(name, params, EMBED, CLASSES), start, end)
        head = ShardedHead(shard, CLASSES, chunk_size=CHUNK)
        optimizer = torch.optim.SGD(shard.parameters(), **FUSED_HYPER)
        head.fuse_optimizer(optimizer)
        for step in range(FUSED_STEPS):
            x, labels = fused_batch(step)
            leaf = x[mine].clone().requires_grad_(True)
            optimizer.zero_grad(set_to_none=True)
            head(leaf, labels[mine]).backward()
            optimizer.step()
            assert shard.weight.grad is None
            results[f"{key}/{step}/weight"] = shard.weight.detach().clone()
            results[f"{key}/{step}/momentum"] = optimizer.state[shard.weight]["momentum_buffer"].clone()
            results[f"{key}/{step}/grad.x"] = leaf.grad
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    """Run every config once in a 2-process gloo group; {rank: {key: tensor}}."""
    outdir = tmp_path_factory.mktemp("sharded")
    root = str(Path(__file__).resolve().parents[2])
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(root)  # the spawned workers import this module by name
        mp.spawn(_worker, args=(free_port(), str(outdir)), nprocs=WORLD, join=True)
    return {r: torch.load(outdir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)}


def gathered(results, key: str, what: str) -> torch.Tensor:
    return torch.cat([results[r][f"{key}/{what}"] for r in range(WORLD)])


@pytest.mark.slow
@pytest.mark.parametrize("key", list(CONFIGS))
def test_two_process_sharded_equals_single_process_dense(sharded_results, key):
    name, params, rate, steps = CONFIGS[key]
    full = build(name, params, EMBED, CLASSES)
    for step in range(steps):
        x, labels = batch(EMBED, CLASSES, batch_size=WORLD * PER_RANK, seed=step + 1)
        index = gathered(sharded_results, f"{key}/{step}", "index")
        if rate < 1.0:
            reference_loss = sub_loss(name, params, full, index)
            sub_labels = torch.searchsorted(index, labels)
            value, grads = run(DenseHead(reference_loss), reference_loss, x, sub_labels)
        else:
            assert torch.equal(index, torch.arange(CLASSES))
            value, grads = run(DenseHead(full), full, x, labels)
        for rank in range(WORLD):  # every rank returns the global loss
            got = sharded_results[rank][f"{key}/{step}/value"]
            assert_same_result((got, {}), (value, {}), 1e-5, f"{key} rank {rank}")
        rows = index if rate < 1 else ...  # the reference of a sampled run holds the sampled rows only
        result = {p: gathered(sharded_results, f"{key}/{step}", f"grad.{p}")[rows] for p in grads if p != "x"}
        result["x"] = gathered(sharded_results, f"{key}/{step}", "grad.x")
        assert_same_result((value, result), (value, grads), 1e-5, f"{key} step {step}")
        reference_state = state(reference_loss if rate < 1 else full)
        for rank in range(WORLD):
            for buffer, expected in reference_state.items():
                got = sharded_results[rank][f"{key}/{step}/{buffer}"]
                torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(FUSED))
def test_two_process_fused_update_equals_dense_then_sgd(sharded_results, key):
    """Each rank's fused shard update == rows of DenseHead + torch SGD over all classes, three steps."""
    name, params = FUSED[key]
    full = build(name, params, EMBED, CLASSES)
    optimizer = torch.optim.SGD(full.parameters(), **FUSED_HYPER)
    for step in range(FUSED_STEPS):
        x, labels = fused_batch(step)
        leaf = x.clone().requires_grad_(True)
        optimizer.zero_grad(set_to_none=True)
        DenseHead(full)(leaf, labels).backward()
        optimizer.step()
        what = f"{key} step {step}"
        assert_close(gathered(sharded_results, f"{key}/{step}", "weight"), full.weight, 1e-5, f"{what} centres")
        assert_close(gathered(sharded_results, f"{key}/{step}", "momentum"),
                     optimizer.state[full.weight]["momentum_buffer"], 1e-5, f"{what} momentum")
        assert_close(gathered(sharded_results, f"{key}/{step}", "grad.x"), leaf.grad, 1e-5, f"{what} grad x")


def test_fusing_a_sampled_shard_is_refused():
    loss = losses.create("arcface", embedding_size=4, num_classes=5)
    head = ShardedHead(loss, 10, sample_rate=0.5)
    with pytest.raises(ValueError, match="sample_rate=1"):
        head.fuse_optimizer(torch.optim.SGD(loss.parameters(), lr=0.1))


def test_sharded_head_needs_a_process_group_and_checks_arguments():
    loss = losses.create("arcface", embedding_size=4, num_classes=5)
    head = ShardedHead(loss, 10)  # constructing it makes no process-group call
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="init_process_group"):
            head(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sample_rate"):
        ShardedHead(loss, 10, sample_rate=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        ShardedHead(loss, 10, chunk_size=0)
    with pytest.raises(ValueError, match="num_classes"):
        create_head("chunked", loss, sharded=True)


def test_shard_range_covers_every_class_once():
    for classes, world in [(23, 2), (10, 3), (7, 7), (1000, 8)]:
        ranges = [shard_range(classes, world, r) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1
    with pytest.raises(ValueError, match="num_classes"):
        shard_range(3, 4, 0)


def test_a_parameter_shared_by_all_classes_is_refused():
    """NormFace's learned scale would be trained separately on each rank: refused with the fix named."""
    loss = build("normface", {"learn_scale": True})
    with pytest.raises(ValueError, match="learned_scale.*learn_scale=False"):
        ShardedHead(loss, num_classes=74)
    ShardedHead(build("softmax", {}), num_classes=74)  # a per-class bias is sharded with its rows: accepted
