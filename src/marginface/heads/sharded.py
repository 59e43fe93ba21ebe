"""Classes sharded over ranks (model parallelism), optionally with Partial FC on each shard.

Rank r of R owns the class rows ``[start_r, end_r)`` (:func:`shard_range`, insightface's split) in its own
loss (built with ``num_classes = end_r - start_r``). One forward:

1. embeddings and labels are all-gathered: every rank sees the global batch (R b, D);
2. each rank computes the target similarity of the samples whose class it owns; an all-reduce shares it, so
   every rank builds the same per-sample context (stateful losses update identically on all ranks);
3. each rank runs the chunked non-target log-sum-exp over its own classes (or its own Partial FC sample);
   the max and the sum of the softmax are all-reduced into the global log-sum-exp;
4. every rank returns the same global loss: mean over the global batch.

Gradients: everything after the gathers is computed identically on every rank (replicated), except the
per-rank pieces (the rank's chunks, its owned target similarities). Their gradients with respect to the
replicated features and context tensors are partial, so they are summed over ranks (one all-reduce in
backward); after that every rank holds the full gradient of the global loss, and the all-gather's backward
keeps each rank's own slice. Result: ``embeddings.grad`` on rank r is d(global loss)/d(rank r's embeddings)
and ``loss.weight.grad`` is the gradient of rank r's shard — both equal to the single-process dense result.
A DDP-wrapped backbone averages its gradients over ranks: multiply this loss by the world size before
backward when the backbone's gradient should be that of the global mean loss (insightface does the same
inside its all-gather).

No process-group call happens at import or construction; the group is queried at the first forward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from marginface.heads.chunked import (
    ChunkedSource,
    ChunkPlan,
    active_update,
    check_chunk_size,
    check_softmax_objective,
    context_tensors,
    rebuild_context,
)
from marginface.heads.fused_update import FusedRowUpdate
from marginface.heads.partial_fc import check_sample_rate, sample_classes
from marginface.losses.base import EMPTY_BATCH_MESSAGE, MarginContext, MarginLoss


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, end) of the classes rank ``rank`` owns: C // R each, the first C % R ranks one more."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
    if num_classes < world_size:
        raise ValueError(f"num_classes ({num_classes}) must be >= world_size ({world_size})")
    base, extra = divmod(num_classes, world_size)
    start = base * rank + min(rank, extra)
    return start, start + base + int(rank < extra)


class _AllGather(torch.autograd.Function):
    """(R b, ...) concatenation over ranks; backward keeps this rank's slice (downstream is replicated)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        ctx.rank, ctx.size = rank, tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size], None


class _SumGradients(torch.autograd.Function):
    """Identity forward on several tensors; backward sums their gradients over ranks in one all-reduce.

    Marks where replicated tensors enter per-rank computations: each rank's gradient there is partial.
    """

    @staticmethod
    def forward(ctx, group, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.group = group
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=ctx.group)
        out, offset = [], 0
        for g in grads:
            out.append(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return (None, *out)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks of per-rank partial values; the result is replicated, so backward is the identity."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def scale_gradient(tensor: Tensor, factor: float) -> Tensor:
    """``tensor`` unchanged, its gradient multiplied by ``factor`` (the world size before a DDP backbone)."""
    return _ScaleGradient.apply(tensor, factor)


def _gather_labels(labels: Tensor, group) -> Tensor:
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, labels.contiguous(), group=group)
    return torch.cat(parts)


def _check_equal_batches(batch_size: int, device: torch.device, group) -> None:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([batch_size], device=device), group=group)
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(
            f"ShardedHead needs the same batch size on every rank, got {[int(s) for s in sizes]}; "
            "use drop_last=True in the data loader"
        )


def check_per_class_parameters(loss: MarginLoss) -> None:
    """Refuse loss parameters shared by all classes (NormFace's learned scale): each rank would train its own copy
    from its own classes' gradient, since nothing all-reduces the loss's parameters."""
    rows = loss.weight.shape[0]
    shared = [name for name, p in loss.named_parameters() if name != "weight" and (p.dim() == 0 or p.shape[0] != rows)]
    if shared:
        raise ValueError(f"{type(loss).__name__} has parameters shared by all classes ({', '.join(shared)}), which "
                         "a sharded head cannot train consistently over ranks; use an unsharded head, or fix them "
                         "(e.g. normface learn_scale=False)")


class ShardedHead(nn.Module):
    """Margin cross-entropy over ``num_classes`` classes split across the ranks of ``process_group``.

    ``loss`` holds this rank's shard: its ``num_classes`` must be ``end - start`` of :func:`shard_range`.
    ``head(embeddings (b, D), labels (b,))`` takes this rank's batch with *global* labels in
    [0, num_classes) and returns the global-batch mean loss (the same value on every rank).
    ``sample_rate`` < 1 applies Partial FC within each shard (each rank samples its own negatives with a
    generator seeded ``seed + rank``); ``last_index`` then holds the global indices this rank visited. The
    generator's state is part of ``state_dict()`` (``_extra_state``; empty until the first sampling forward).
    """

    def __init__(self, loss: MarginLoss, num_classes: int, chunk_size: int | None = None,
                 sample_rate: float = 1.0, seed: int = 0, sparse_grad: bool = True,
                 process_group=None) -> None:
        super().__init__()
        check_softmax_objective(loss, "ShardedHead")
        check_per_class_parameters(loss)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes (all ranks together) must be an int >= 2, got {num_classes!r}")
        self.loss, self.num_classes = loss, num_classes
        self.chunk_size = check_chunk_size(chunk_size)
        self.sample_rate = check_sample_rate(sample_rate)
        self.seed, self.sparse_grad, self.process_group = int(seed), bool(sparse_grad), process_group
        self.generator: torch.Generator | None = None  # created at the first forward, when the rank is known
        self.last_index: Tensor | None = None
        self._fused: FusedRowUpdate | None = None

    def get_extra_state(self) -> Tensor:
        return torch.empty(0, dtype=torch.uint8) if self.generator is None else self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.generator = None
        if state.numel():
            self.generator = torch.Generator()
            self.generator.set_state(state)

    def fuse_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Apply ``optimizer``'s SGD update of this rank's centres inside backward (None: stop), as
        :meth:`marginface.heads.ChunkedHead.fuse_optimizer`: no (C / R, D) gradient. Each rank owns its rows, so
        nothing needs reducing. Full shards only: with ``sample_rate`` < 1 the gradient is already sparse rows.
        """
        if optimizer is not None and self.sample_rate < 1.0:
            raise ValueError("fuse_optimizer needs sample_rate=1 (Partial FC already updates only the sampled "
                             "rows, through SparseRowSGD)")
        self._fused = None if optimizer is None else FusedRowUpdate(optimizer, self.loss.weight)

    def _shard(self) -> tuple[int, int, int]:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("ShardedHead needs torch.distributed set up first (dist.init_process_group)")
        rank = dist.get_rank(self.process_group)
        start, end = shard_range(self.num_classes, dist.get_world_size(self.process_group), rank)
        if self.loss.weight.shape[0] != end - start:
            raise ValueError(
                f"rank {rank} owns classes [{start}, {end}) but its loss has {self.loss.weight.shape[0]} "
                "rows; "
                f"build it with num_classes={end - start} (marginface.heads.shard_range)"
            )
        return rank, start, end

    def _check_inputs(self, embeddings: Tensor, labels: Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.loss.embedding_size:
            size = self.loss.embedding_size
            raise ValueError(f"embeddings must be (b, {size}), got {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1] or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor ({embeddings.shape[0]},) of global classes")
        if embeddings.shape[0] == 0:  # every rank has the same batch size, so every rank raises here
            raise ValueError(EMPTY_BATCH_MESSAGE)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}) (global indices)")

    def _plan(self, labels_all: Tensor, rank: int, start: int, end: int) -> tuple[ChunkPlan, Tensor, Tensor]:
        """The rank's plan, the owned mask (N,) and the local target rows (N,) (0 where not owned)."""
        owned = (labels_all >= start) & (labels_all < end)
        local = torch.where(owned, labels_all - start, torch.zeros_like(labels_all))
        index = None
        positions = torch.where(owned, local, torch.full_like(local, -1))
        num_sample = max(1, int(self.sample_rate * (end - start)))
        if num_sample < end - start:
            if self.generator is None:
                self.generator = torch.Generator().manual_seed(self.seed + rank)
            index = sample_classes(torch.unique(local[owned]), end - start, num_sample, self.generator)
            positions = torch.where(owned, torch.searchsorted(index, local), positions)
        everything = torch.arange(start, end, device=labels_all.device)
        self.last_index = everything if index is None else index + start
        plan = ChunkPlan(self.loss, positions=positions, chunk_size=self.chunk_size, index=index,
                         sparse_grad=self.sparse_grad, fused=active_update(self._fused, self.loss))
        return plan, owned, local

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Global-batch mean loss (scalar, identical on every rank) of this rank's embeddings (b, D)."""
        rank, start, end = self._shard()
        self._check_inputs(embeddings, labels)
        group = self.process_group
        _check_equal_batches(embeddings.shape[0], embeddings.device, group)
        labels_all = _gather_labels(labels.long(), group)
        plan, owned, local = self._plan(labels_all, rank, start, end)
        emb_all = _AllGather.apply(embeddings, group)
        return self.loss.loss_from_source(emb_all, labels_all, _ShardSource(plan, local, owned, group))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, sample_rate={self.sample_rate}, chunk_size={self.chunk_size}"


class _ShardSource(ChunkedSource):
    """The sharded head's source: this rank's chunks, with the per-rank pieces summed over ranks.

    ``target_rows`` (N,) local rows of the owned targets (0 elsewhere), ``owned`` (N,) bool. The features
    reach the per-rank pieces (owned target rows, chunks) through one gradient all-reduce, made at
    ``target_similarity`` (the driver's first call) and reused by ``nontarget_lse``.
    """

    def __init__(self, plan: ChunkPlan, target_rows: Tensor, owned: Tensor, group) -> None:
        super().__init__(plan, target_rows)
        self.owned, self.group = owned, group
        self.features_part: Tensor | None = None

    def target_similarity(self, features: Tensor) -> Tensor:
        (self.features_part,) = _SumGradients.apply(self.group, features)
        owned_sim = super().target_similarity(self.features_part)
        owned_sim = torch.where(self.owned, owned_sim, torch.zeros_like(owned_sim))
        return _AllReduceSum.apply(owned_sim, self.group)

    def class_statistic(self, features: Tensor) -> Tensor:
        statistic = super().class_statistic(features)
        dist.all_reduce(statistic, group=self.group)
        return statistic

    def nontarget_lse(self, features: Tensor, ctx: MarginContext) -> Tensor:
        lse_local = super().nontarget_lse(self.features_part, _partial_context(ctx, self.group))
        return _global_lse(lse_local, self.group)


def _partial_context(ctx: MarginContext, group) -> MarginContext:
    """``ctx`` with its gradient-carrying tensors routed through one gradient all-reduce (see module doc)."""
    names, tensors = context_tensors(ctx)
    carry = [i for i, t in enumerate(tensors) if t.requires_grad]
    if not carry:
        return ctx
    reduced = _SumGradients.apply(group, *[tensors[i] for i in carry])
    for i, t in zip(carry, reduced):
        tensors[i] = t
    return rebuild_context(ctx, names, tensors)


def _global_lse(lse_local: Tensor, group) -> Tensor:
    """(N,) log-sum-exp over all ranks from each rank's (N,) one: all-reduced max, then all-reduced sum."""
    shift = lse_local.detach().clone()
    dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = _AllReduceSum.apply(torch.exp(lse_local - shift), group)
    return shift + torch.log(total)
