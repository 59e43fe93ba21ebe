"""The shared pipeline itself: the hook order, the centres built after the subclass constructor, and the dense
source's non-target log-sum-exp giving the dense loss (the last step the chunked and sharded heads use)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from marginface import losses
from marginface.heads import ChunkedHead
from marginface.losses.arcface import ArcFaceLoss
from marginface.losses.base import DenseSimilarity, MarginContext, MarginLoss
from tests.losses.cases import all_cases, batch, build, case_id


class RecordingArcFace(ArcFaceLoss):
    """ArcFace that records the order of its hook calls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def update_state(self, ctx: MarginContext) -> None:
        assert ctx.target_logit is ctx.target_similarity  # not transformed yet
        self.calls.append("update_state")

    def add_extras(self, ctx: MarginContext) -> None:
        self.calls.append("add_extras")

    def target_transform(self, cos: torch.Tensor, ctx: MarginContext) -> torch.Tensor:
        self.calls.append("target_transform")
        return super().target_transform(cos, ctx)


@pytest.mark.parametrize("head", ["dense", "chunked"])
def test_hooks_run_once_in_their_order_and_update_state_only_in_training(head):
    loss = RecordingArcFace(6, 7).double()
    run = loss if head == "dense" else ChunkedHead(loss, chunk_size=3)
    x, labels = batch(loss)
    run.train()(x, labels)
    assert loss.calls == ["update_state", "add_extras", "target_transform"]
    loss.calls.clear()
    run.eval()(x, labels)
    assert loss.calls == ["add_extras", "target_transform"]


class FieldShaped(MarginLoss):
    """A loss whose centre shape and initialisation read fields set after ``super().__init__``."""

    def __init__(self, embedding_size: int, num_classes: int, k: int = 2) -> None:
        super().__init__(embedding_size, num_classes, scale=2.0)
        self.k = k
        self.offset = torch.nn.Parameter(torch.empty(()))

    def weight_shape(self) -> tuple[int, ...]:
        return (self.num_classes, self.k, self.embedding_size)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.offset.fill_(float(self.k))


def test_centres_are_built_after_the_subclass_constructor_and_stay_the_first_parameter():
    loss = FieldShaped(4, 5, k=3)
    assert loss.weight.shape == (5, 3, 4)
    assert float(loss.offset.detach()) == 3.0
    assert [name for name, _ in loss.named_parameters()] == ["weight", "offset"]
    softmax = losses.create("softmax", embedding_size=4, num_classes=5)
    assert [name for name, _ in softmax.named_parameters()] == ["weight", "bias"]
    assert copy.deepcopy(softmax).weight.shape == (5, 4)


def test_a_loss_class_keeps_its_constructor_signature():
    """The post-init step must not hide the constructor's parameters (the registry and CLI read them)."""
    assert list(inspect.signature(FieldShaped).parameters) == ["embedding_size", "num_classes", "k"]
    init = list(inspect.signature(ArcFaceLoss.__init__).parameters)
    assert list(inspect.signature(ArcFaceLoss).parameters) == init[1:]
    assert losses.parameters("subcenter_arcface")["k"] == 3


@pytest.mark.parametrize("case", [c for c in all_cases() if build(*c).objective == "softmax"], ids=case_id)
def test_dense_source_lse_gives_the_dense_loss(case):
    """``loss_from_lse`` of the dense source's non-target log-sum-exp is the dense cross-entropy (float64)."""
    loss = build(*case)
    twin = copy.deepcopy(loss)
    x, labels = batch(loss)
    expected = loss(x, labels)
    via_lse = twin.loss_from_source(x, labels, DenseSimilarity(twin, labels))
    torch.testing.assert_close(via_lse, expected, rtol=1e-12, atol=1e-12)
    for name, buffer in loss.named_buffers():
        torch.testing.assert_close(dict(twin.named_buffers())[name], buffer, rtol=0, atol=0)
