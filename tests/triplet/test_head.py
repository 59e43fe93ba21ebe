"""TripletHead: mining over the global batch under 2 gloo processes equals one process holding the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from marginface.triplet import TripletHead, TripletLoss


def _data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=gen), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.randn(4, 5, generator=gen)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, labels, weight = _data()
    w = weight.clone().requires_grad_()
    rows = slice(rank * 4, (rank + 1) * 4)  # rank 0 holds identities 0-1, rank 1 identities 2-3
    loss = TripletHead(TripletLoss(0.5, mining="batch_all"))(x[rows] @ w.t(), labels[rows])
    loss.backward()
    dist.all_reduce(w.grad)  # what DDP does: the mean over ranks
    w.grad /= world
    if rank == 0:
        torch.save({"loss": loss.detach(), "grad": w.grad}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_mine_the_global_batch_and_get_its_gradient(tmp_path):
    from tests.training.test_trainer import free_port

    out = str(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), out), nprocs=2)
    got = torch.load(out, weights_only=True)
    x, labels, weight = _data()
    w = weight.clone().requires_grad_()
    loss = TripletHead(TripletLoss(0.5, mining="batch_all"))(x @ w.t(), labels)
    loss.backward()
    assert float(loss.detach()) > 0
    assert float(got["loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    torch.testing.assert_close(got["grad"], w.grad, rtol=1e-5, atol=1e-6)


def test_combined_objective_is_softmax_plus_weighted_triplet():
    from marginface import losses

    x, labels, _ = _data()
    arc = losses.create("arcface", embedding_size=5, num_classes=4)
    head = TripletHead(TripletLoss(0.5), margin_head=arc, weight=0.3)
    expected = arc(x, labels) + 0.3 * TripletLoss(0.5)(x, labels)
    assert float(head(x, labels).detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
