"""Chunked margin cross-entropy: the loss of any softmax-objective margin loss without a (B, C) matrix.

The dense head computes every logit at once: at C = 1M classes and B = 512 each (B, C) float32 tensor is 2 GB,
and autograd keeps several. Here the classes are visited one chunk of ``chunk_size`` at a time:

* forward: per chunk, the loss's own ``similarity`` and ``nontarget_logits`` (element-wise given the
  per-sample context), the target column masked out, and an online log-sum-exp over chunks. Only the (B,)
  non-target log-sum-exp ``lse_nt`` is kept; the loss of sample i is ``logaddexp(lse_nt_i, t_i) - t_i``
  with the target logit ``t_i = ctx.target_logit`` (from the target similarity): the dense cross-entropy.
* backward: each chunk is recomputed on detached leaf copies and its gradient ``softmax * grad / B`` (target
  column zeroed) is pushed through the loss's transforms with ``torch.autograd.grad``; the gradients of the
  features, of the centre rows (written straight into one weight-gradient buffer), of the context tensors the
  non-target transform reads (SphereFace's norms, ...) and of the loss's other parameters (softmax bias) are
  accumulated chunk by chunk.

The target similarity is ``diag(loss.similarity(features, weight[labels], labels))`` — the same function the
chunks use, on the B target rows only (:class:`ChunkedSource`, the heads' source for the pipeline driver
``MarginLoss.run_pipeline``) — gathered through :func:`gather_rows`, whose gradient is added into
the chunk backward's weight-gradient buffer (:class:`GradSink`) or returned as B sparse rows, so no second
dense (C, D) gradient is ever created.

Shared by :mod:`marginface.heads.partial_fc` (chunks over a sampled index) and
:mod:`marginface.heads.sharded` (chunks over a rank's shard).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from marginface.heads.fused_update import FusedRowUpdate, PendingTargets
from marginface.losses.base import MarginContext, MarginLoss, autocast_disabled

#: ``chunk_size=None`` (the default) sizes chunks by bytes: one (N, chunk) or (chunk, D) float32 temporary is at
#: most this many bytes on the CPU. glibc's malloc keeps freed blocks of a few MiB in its heap (its mmap threshold
#: rises to the largest block freed, up to 32 MiB), where they fragment: with 16 MiB chunk temporaries the
#: resident set grew by ~0.3 GiB over the live tensors at C = 200k, B = D = 512; with 4 MiB ones it stays close to
#: them, and the smaller matmuls were no slower on the CPU (docs/heads.md, "Chunk size and the allocator").
CPU_CHUNK_BYTES = 4 * 2**20
#: classes per chunk on accelerators (their caching allocators reuse blocks; wide matmuls keep kernels busy).
DEFAULT_CHUNK_SIZE = 8192
#: never fewer classes per chunk than this from the byte rule (huge batches would otherwise give tiny matmuls).
MIN_AUTO_CHUNK = 256


def check_chunk_size(chunk_size: int | None) -> int | None:
    """Return ``chunk_size`` if it is None (sized per batch) or an int >= 1, else raise ValueError naming the fix."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 (classes per chunk) or None (sized from the batch), "
                         f"got {chunk_size!r}")
    return chunk_size


def auto_chunk_size(num_samples: int, row_size: int, device: torch.device) -> int:
    """Classes per chunk when none is given: on the CPU the largest power of two whose (num_samples, chunk) and
    (chunk, row_size) float32 temporaries stay within :data:`CPU_CHUNK_BYTES` (at least :data:`MIN_AUTO_CHUNK`);
    elsewhere :data:`DEFAULT_CHUNK_SIZE`."""
    if device.type != "cpu":
        return DEFAULT_CHUNK_SIZE
    fit = CPU_CHUNK_BYTES // (4 * max(num_samples, row_size, 1))
    return max(MIN_AUTO_CHUNK, 1 << (fit.bit_length() - 1)) if fit >= 1 else MIN_AUTO_CHUNK


def active_update(fused: FusedRowUpdate | None, loss: MarginLoss) -> FusedRowUpdate | None:
    """The fused update a forward should use: only when a backward can follow (grad mode, trainable centres).

    Raises if the previous backward stopped before the target rows' update (it never reached ``loss.weight``).
    """
    if fused is not None and fused.awaiting_targets:
        raise RuntimeError("the previous backward through this fused head did not reach loss.weight, so "
                           "its target rows were never updated: call .backward() on the head's loss")
    return fused if torch.is_grad_enabled() and loss.weight.requires_grad else None


def check_softmax_objective(loss: MarginLoss, head: str) -> None:
    """Chunked, sampled and sharded heads rebuild a softmax cross-entropy; other objectives need DenseHead."""
    objective = getattr(loss, "objective", "softmax")
    if objective != "softmax":
        raise ValueError(
            f"{type(loss).__name__} has objective {objective!r}, which is not supported by {head} (it "
            "computes a softmax cross-entropy chunk by chunk); use DenseHead (create_head('dense', loss))"
        )


class GradSink:
    """Lets the target-row gradient land in the chunked head's dense weight-gradient buffer, in place.

    Autograd sums two gradients of ``weight`` out of place (a second dense (C, D) tensor) when the dense one
    arrives first, which it does here (the chunk Function is created last, so its backward runs first). The
    chunk backward therefore offers its dense buffer through this sink and the target gather adds its B rows
    into it and returns no gradient; if the gather runs first instead, it returns a sparse gradient, which
    autograd adds in place. ``AccumulateGrad`` runs only after both, so it always sees the full sum.
    """

    def __init__(self) -> None:
        self.buffer: Tensor | None = None
        self.gather_done = False
        # Fused update (FusedRowUpdate): the target rows' chunk gradients, waiting for the gather's gradient.
        self.pending: PendingTargets | None = None
        self.expects_pending = False

    def offer(self, buffer: Tensor) -> None:
        """Called by the chunk backward with its dense weight gradient."""
        if self.gather_done:  # the gather already returned its sparse gradient in this backward pass
            self.gather_done = False
        else:
            self.buffer = buffer


class _GatherRows(torch.autograd.Function):
    """``weight[index]`` whose gradient never is a second dense (C, D) tensor (sparse rows or the sink)."""

    @staticmethod
    def forward(ctx, weight: Tensor, index: Tensor, sink: GradSink | None) -> Tensor:
        ctx.save_for_backward(index)
        ctx.weight_shape, ctx.sink = weight.shape, sink
        return weight.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (index,) = ctx.saved_tensors
        sink = ctx.sink
        if sink is not None and sink.expects_pending:
            if sink.pending is None:  # the graph makes the chunk backward run first; never expected
                raise RuntimeError("fused centre update: the target-row gradient arrived before the chunks'")
            sink.pending.finish(index, grad)
            sink.pending, sink.expects_pending = None, False
            return None, None, None
        if sink is not None and sink.buffer is not None:
            sink.buffer.index_add_(0, index, grad)
            sink.buffer = None
            return None, None, None
        if sink is not None:
            sink.gather_done = True
        sparse = torch.sparse_coo_tensor(index[None], grad, ctx.weight_shape, check_invariants=False)
        return sparse, None, None


def gather_rows(weight: Tensor, index: Tensor, sink: GradSink | None = None) -> Tensor:
    """(n, ...) rows ``weight[index]``; their gradient reaches ``weight`` sparse, or through ``sink``."""
    return _GatherRows.apply(weight, index, sink)


@dataclasses.dataclass
class ChunkPlan:
    """Which classes one head visits, and where each sample's target sits among them.

    ``chunk_size`` classes per chunk (None: :func:`auto_chunk_size` of this batch).
    ``index`` (n,) sorted indices into ``loss.weight`` (None: all of ``loss.weight``, in order);
    ``positions`` (B,) each sample's target position in ``[0, n)``, or -1 when its class is not in the plan
    (a class owned by another rank). ``sparse_grad``: return the weight gradient as a sparse COO tensor of the
    visited rows instead of a dense one. ``fused``: apply the optimizer's update to the rows in backward and
    return no weight gradient (all classes, ``index`` None, only).
    """

    loss: MarginLoss
    positions: Tensor
    chunk_size: int | None  # None: auto_chunk_size for this batch
    index: Tensor | None = None
    sparse_grad: bool = False
    sink: GradSink = dataclasses.field(default_factory=GradSink)
    fused: FusedRowUpdate | None = None

    def __post_init__(self) -> None:
        self.sink.expects_pending = self.fused is not None  # the target gather finishes the fused update
        if self.chunk_size is None:
            weight = self.loss.weight
            self.chunk_size = auto_chunk_size(self.positions.numel(), weight[0].numel(), weight.device)

    @property
    def num_classes(self) -> int:
        return self.loss.weight.shape[0] if self.index is None else int(self.index.numel())

    def chunks(self) -> Iterator[tuple[int, int, Tensor]]:
        """(a, b, classes): positions [a, b) of the plan and their indices into ``loss.weight``."""
        device = self.loss.weight.device
        for a in range(0, self.num_classes, self.chunk_size):
            b = min(a + self.chunk_size, self.num_classes)
            classes = torch.arange(a, b, device=device) if self.index is None else self.index[a:b]
            yield a, b, classes

    def rows(self, weight: Tensor, a: int, b: int, classes: Tensor) -> Tensor:
        return weight[a:b] if self.index is None else weight.index_select(0, classes)

    def target_cells(self, a: int, b: int) -> tuple[Tensor, Tensor]:
        """(rows, columns) of the chunk [a, b) that hold a sample's target class."""
        local = self.positions - a
        hit = (local >= 0) & (local < b - a)
        samples = hit.nonzero().squeeze(1)
        return samples, local[samples]


# Context fields a non-target transform may read; they enter the autograd Function as inputs so their
# gradients (SphereFace's norms, ...) are returned. Labels and the regulariser are not read by it.
_CTX_FIELDS = ("norms", "target_similarity", "target_logit")


def context_tensors(ctx: MarginContext) -> tuple[list[str], list[Tensor]]:
    """The named tensors of ``ctx`` a non-target transform may read (fields and extras), in a fixed order."""
    names = list(_CTX_FIELDS) + [f"extras.{k}" for k in sorted(ctx.extras)]
    tensors = [getattr(ctx, f) for f in _CTX_FIELDS] + [ctx.extras[k] for k in sorted(ctx.extras)]
    return names, tensors


def rebuild_context(ctx: MarginContext, names: list[str], tensors: list[Tensor]) -> MarginContext:
    """A copy of ``ctx`` with the named tensors replaced (leaf copies in backward, reduced when sharded)."""
    fields, extras = {}, dict(ctx.extras)
    for name, tensor in zip(names, tensors):
        if name.startswith("extras."):
            extras[name[len("extras."):]] = tensor
        else:
            fields[name] = tensor
    return dataclasses.replace(ctx, extras=extras, **fields)


def other_parameters(loss: MarginLoss) -> list[nn.Parameter]:
    """The loss's parameters besides ``weight`` (plain softmax's bias), read by ``similarity`` per chunk."""
    return [p for name, p in loss.named_parameters() if name != "weight"]


def chunk_logits(plan: ChunkPlan, feats: Tensor, weight: Tensor, ctx: MarginContext, a: int, b: int,
                 classes: Tensor) -> Tensor:
    """(B, b - a) non-target logits of one chunk (the target cells are NOT masked here)."""
    sim = plan.loss.similarity(feats, plan.rows(weight, a, b, classes), classes)
    return plan.loss.nontarget_logits(sim, ctx)


class _NonTargetLSE(torch.autograd.Function):
    """(B,) log-sum-exp of the non-target logits over a plan's classes, by chunks, recomputed in backward.

    Inputs: plan, ctx (the MarginContext template), names (of the context tensors), feats (B, D), weight
    (C, ...), then the context tensors, then the loss's other parameters. Saves only feats, the context
    tensors and the (B,) result: O(B D) memory, never (B, C).
    """

    @staticmethod
    def forward(ctx, plan: ChunkPlan, mctx: MarginContext, names: list[str], feats: Tensor, weight: Tensor,
                *tensors: Tensor) -> Tensor:
        num_ctx = len(names)
        margin_ctx = rebuild_context(mctx, names, list(tensors[:num_ctx]))
        lse = torch.full((feats.shape[0],), float("-inf"), dtype=feats.dtype, device=feats.device)
        for a, b, classes in plan.chunks():
            logits = chunk_logits(plan, feats, weight, margin_ctx, a, b, classes)
            samples, cols = plan.target_cells(a, b)
            logits[samples, cols] = float("-inf")  # the target column is replaced by ctx.target_logit outside
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        ctx.plan, ctx.mctx, ctx.names, ctx.num_ctx = plan, mctx, names, num_ctx
        ctx.save_for_backward(feats, weight, lse, *tensors[:num_ctx])
        return lse

    @staticmethod
    def backward(ctx, grad_lse: Tensor):
        feats, weight, lse, *ctx_tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        params = other_parameters(ctx.plan.loss)
        with torch.enable_grad(), autocast_disabled(feats.device.type):
            grads = _backward_chunks(ctx.plan, ctx.mctx, ctx.names, feats, weight, lse, grad_lse, ctx_tensors,
                                     params, needs)
        return (None, None, None, *grads)


def _backward_chunks(plan: ChunkPlan, mctx: MarginContext, names: list[str], feats: Tensor, weight: Tensor,
                     lse: Tensor, grad_lse: Tensor, ctx_tensors: list[Tensor], params: list[Tensor],
                     needs: tuple[bool, ...]) -> list[Tensor | None]:
    """Recompute every chunk and accumulate the gradients of feats, weight, context tensors and parameters."""
    finite = torch.isfinite(lse)  # -inf: no non-target class in the plan for that sample; no gradient
    lse_safe = torch.where(finite, lse, torch.zeros_like(lse))
    grad_lse = torch.where(finite, grad_lse, torch.zeros_like(grad_lse))
    leaf_feats = feats.detach().requires_grad_(needs[0])
    leaf_ctx = [t.detach().requires_grad_(need) for t, need in zip(ctx_tensors, needs[2:])]
    margin_ctx = rebuild_context(mctx, names, leaf_ctx)
    inputs = [leaf_feats, *leaf_ctx, *params]
    wanted = [needs[0], *needs[2:]]
    totals: list[Tensor | None] = [torch.zeros_like(t) if w else None for t, w in zip(inputs, wanted)]
    fused = _FusedChunks(plan, weight) if needs[1] and plan.fused is not None else None
    weight_grad = _WeightGrad(plan, weight) if needs[1] and fused is None else None
    for a, b, classes in plan.chunks():
        rows = plan.rows(weight, a, b, classes).detach().requires_grad_(needs[1])
        sim = plan.loss.similarity(leaf_feats, rows, classes)
        logits = plan.loss.nontarget_logits(sim, margin_ctx)
        with torch.no_grad():  # softmax * dL/dlse, in place to keep one (B, c) temporary
            upstream = torch.sub(logits, lse_safe[:, None]).exp_().mul_(grad_lse[:, None])
            samples, cols = plan.target_cells(a, b)
            upstream[samples, cols] = 0.0
        sources = [t for t, w in zip(inputs, wanted) if w] + ([rows] if needs[1] else [])
        got = iter(torch.autograd.grad(logits, sources, upstream, allow_unused=True))
        for i, w in enumerate(wanted):
            if w:
                g = next(got)
                if g is not None:
                    totals[i] += g
        if weight_grad is not None:
            weight_grad.add(a, b, next(got))
        elif fused is not None:
            fused.step(a, b, next(got))
    if fused is not None:
        fused.finish()
    weight_total = None if weight_grad is None else weight_grad.result()
    if weight_total is not None and not weight_total.is_sparse:
        plan.sink.offer(weight_total)
    return [totals[0], weight_total, *totals[1:]]


class _WeightGrad:
    """The weight gradient built chunk by chunk: dense (C, ...) or sparse COO over the plan's rows."""

    def __init__(self, plan: ChunkPlan, weight: Tensor) -> None:
        self.plan, self.weight = plan, weight
        self.sparse = plan.sparse_grad and plan.index is not None
        shape = (plan.num_classes, *weight.shape[1:]) if self.sparse else weight.shape
        # Chunks tile the buffer exactly once when it is indexed by plan position: no zero-fill needed.
        self.tiled = self.sparse or plan.index is None
        empty = torch.empty if self.tiled else torch.zeros
        self.buffer = empty(shape, dtype=weight.dtype, device=weight.device)

    def add(self, a: int, b: int, grad_rows: Tensor | None) -> None:
        if self.tiled:
            if grad_rows is None:
                self.buffer[a:b].zero_()
            else:
                self.buffer[a:b].copy_(grad_rows)
        elif grad_rows is not None:
            self.buffer.index_add_(0, self.plan.index[a:b], grad_rows)

    def result(self) -> Tensor:
        if not self.sparse:
            return self.buffer
        index = self.plan.index[None]
        return torch.sparse_coo_tensor(index, self.buffer, self.weight.shape, check_invariants=False)


class _FusedChunks:
    """Chunk by chunk SGD of the centres (FusedRowUpdate), the batch's target rows held back.

    A target row's gradient is incomplete here (its target-logit part arrives in the gather's backward), so its
    chunk gradient is parked in ``pending`` and its value and momentum are restored after the chunk update.
    """

    def __init__(self, plan: ChunkPlan, weight: Tensor) -> None:
        self.plan, self.update = plan, plan.fused
        self.update.begin()
        positions = plan.positions
        self.targets = torch.unique(positions[positions >= 0])  # sorted rows; -1: a class of another rank
        self.pending = torch.zeros((self.targets.numel(), *weight.shape[1:]), dtype=weight.dtype,
                                   device=weight.device)
        starts = torch.arange(0, plan.num_classes + plan.chunk_size, plan.chunk_size, device=weight.device)
        self.bounds = torch.searchsorted(self.targets, starts).tolist()  # one host sync, not one per chunk
        self.chunk = 0

    def step(self, a: int, b: int, grad_rows: Tensor | None) -> None:
        lo, hi = self.bounds[self.chunk], self.bounds[self.chunk + 1]
        self.chunk += 1
        if grad_rows is None:
            grad_rows = torch.zeros((b - a, *self.pending.shape[1:]), dtype=self.pending.dtype,
                                    device=self.pending.device)
        targets = self.targets[lo:hi]
        self.pending[lo:hi] = grad_rows[targets - a]
        saved = self.update.snapshot(targets)
        self.update.update_rows(slice(a, b), grad_rows)
        self.update.restore(targets, saved)

    def finish(self) -> None:
        self.plan.sink.pending = PendingTargets(self.update, self.targets, self.pending)
        self.update.awaiting_targets = True


@dataclasses.dataclass
class ChunkedSource:
    """The chunked heads' :class:`~marginface.losses.base.SimilaritySource` over ``plan``'s classes.

    ``target_rows`` (B,) index ``loss.weight`` (local rows for a shard): the rows of each sample's target.
    """

    plan: ChunkPlan
    target_rows: Tensor

    def target_similarity(self, features: Tensor) -> Tensor:
        """(B,) from the B target rows only: the diagonal of a (B, B) similarity (B^2 D flops, negligible next
        to B C D, and the very function the chunks apply), gathered through the plan's :class:`GradSink`."""
        loss = self.plan.loss
        rows = gather_rows(loss.weight, self.target_rows, self.plan.sink)
        return loss.similarity(features, rows, self.target_rows).diagonal()

    @torch.no_grad()
    def class_statistic(self, features: Tensor) -> Tensor:
        """(B,) the loss's ``class_statistic`` summed chunk by chunk over the plan's classes (no gradient)."""
        plan = self.plan
        total = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        for a, b, classes in plan.chunks():
            sim = plan.loss.similarity(features, plan.rows(plan.loss.weight, a, b, classes), classes)
            mask = torch.zeros_like(sim, dtype=torch.bool)
            samples, cols = plan.target_cells(a, b)
            mask[samples, cols] = True
            total += plan.loss.class_statistic(sim, mask)
        return total

    def nontarget_lse(self, features: Tensor, ctx: MarginContext) -> Tensor:
        """(B,) log-sum-exp of the non-target logits over the plan's classes; differentiable, O(B D) memory."""
        names, tensors = context_tensors(ctx)
        params = other_parameters(self.plan.loss)
        return _NonTargetLSE.apply(self.plan, ctx, names, features, self.plan.loss.weight, *tensors, *params)


class ChunkedHead(nn.Module):
    """The margin cross-entropy of ``loss`` over all its classes, ``chunk_size`` classes at a time.

    ``head(embeddings (B, D), labels (B,))`` returns the same mean loss and gradients (embeddings, centres,
    other loss parameters) as ``DenseHead(loss)`` while holding at most a few (B, chunk_size) tensors; the
    weight gradient is dense (C, ...), unless :meth:`fuse_optimizer` moved the centres' SGD update into the
    backward (then there is none). Only losses with ``objective == "softmax"``. ``chunk_size`` None sizes the
    chunks from the batch (:func:`auto_chunk_size`).
    """

    def __init__(self, loss: MarginLoss, chunk_size: int | None = None) -> None:
        super().__init__()
        check_softmax_objective(loss, "ChunkedHead")
        self.loss = loss
        self.chunk_size = check_chunk_size(chunk_size)
        self._fused: FusedRowUpdate | None = None

    def fuse_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Apply ``optimizer``'s SGD update of ``loss.weight`` inside every backward (None: stop doing so).

        The (C, D) centre gradient is then never allocated and ``loss.weight.grad`` stays None, so
        ``optimizer.step()`` updates only the other parameters. Every backward is one step of the centres:
        no gradient accumulation, GradScaler or DDP all-reduce of the centres (see
        :mod:`marginface.heads.fused_update`).
        """
        self._fused = None if optimizer is None else FusedRowUpdate(optimizer, self.loss.weight)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean loss (scalar) of embeddings (B, D) with integer labels (B,) in [0, num_classes)."""
        self.loss.check_inputs(embeddings, labels)
        labels = labels.long()
        plan = ChunkPlan(self.loss, positions=labels, chunk_size=self.chunk_size,
                         fused=active_update(self._fused, self.loss))
        return self.loss.loss_from_source(embeddings, labels, ChunkedSource(plan, labels))

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}" + (", fused_optimizer=True" if self._fused is not None else "")
