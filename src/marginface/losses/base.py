"""The shared pipeline of every margin loss, and the one driver every head runs it through.

A margin loss turns embeddings ``x`` (B, D) and labels ``y`` (B,) into logits (B, C) in element-wise steps,
which is what lets a chunked or sharded head (``marginface.heads``) apply any loss to any slice of classes
without ever seeing all of them. :meth:`MarginLoss.run_pipeline` is the driver; a head supplies only a
:class:`SimilaritySource` (how it gets the target similarities, the class statistic and the non-target
log-sum-exp):

1. ``features(embeddings)`` (B, D); ``source.target_similarity(features)`` (B,) the cosine (for plain softmax,
   the linear score) of each sample with its own class, from the loss's ``similarity``.
2. ``source.class_statistic(features)`` (B,), summed over every class, only when ``needs_class_statistic``.
3. ``make_context``: the per-sample context, built by the loss's hooks in this order, each called once:
   ``update_state(ctx)`` (training mode only: running statistics move *before* they are used) ->
   ``add_extras(ctx)`` (the per-sample tensors the transforms read, the regulariser) ->
   ``target_transform(cos, ctx)`` (the target logit ``ctx.target_logit``).
4. ``nontarget_logits(similarity, ctx)`` (B, c) for any slice of classes; ``source.nontarget_lse`` reduces them
   over every class but the target, and the loss is ``loss_from_lse``. The dense path has every logit, so
   there the non-target logits with the target column replaced by ``ctx.target_logit`` are the (B, C) logits
   and the loss is ``loss_from_logits`` (which losses that are not a softmax cross-entropy, SphereFace2,
   override).

Numerics: everything after the backbone runs in float32, with autocast disabled, whatever the input dtype.
Angles are taken from cosines clamped to [-1, 1]; ``sqrt(1 - cos^2)`` is clamped away from 0 (so gradients at
cos = +-1 stay finite) and the true gradient of every margin function is used (no straight-through tricks).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# 1 - cos^2 is clamped to at least this before a square root: it bounds d sin(theta)/d cos(theta) by 1/sqrt(EPS).
SIN_EPS = 1e-6
# Rows whose largest |value| exceeds 2^50 are scaled down by a power of two before a norm: float32 squares overflow
# past ~2^64 (sum of D <= 2^16 squares of 2^50 stays below 2^116). Smaller rows are untouched (factor exactly 1).
_NORM_SAFE_MAX_EXPONENT = 50.0

EMPTY_BATCH_MESSAGE = ("an empty batch (0 embeddings): the mean loss over no samples is undefined; skip the step "
                       "(nothing was changed: the loss's running state and the head's sampler are untouched)")


@dataclass
class MarginContext:
    """Per-sample quantities one forward pass shares between its chunks. All tensors are float32, (B,)."""

    labels: Tensor
    norms: Tensor
    target_similarity: Tensor
    target_logit: Tensor
    # Extra per-sample tensors a loss needs in its non-target transform (e.g. the hard-negative threshold).
    extras: dict[str, Tensor] = field(default_factory=dict)
    # Per-sample term added to the cross-entropy (MagFace's magnitude regulariser), or None.
    regularizer: Tensor | None = None
    # The summed ``class_statistic`` over every class when the loss ``needs_class_statistic`` (no gradient).
    class_statistic: Tensor | None = None


class SimilaritySource(Protocol):
    """What a head supplies to :meth:`MarginLoss.run_pipeline`: the all-class quantities of one forward.

    A source is built for one forward; the driver calls ``target_similarity`` first, then ``class_statistic``
    (only when the loss ``needs_class_statistic``), then the head calls ``nontarget_lse`` (or, dense, reads
    the logits). ``features`` (B, D) are the loss's ``features`` of the embeddings.
    """

    def target_similarity(self, features: Tensor) -> Tensor:
        """(B,) the loss's ``similarity`` of each sample with its own class."""

    def class_statistic(self, features: Tensor) -> Tensor:
        """(B,) the loss's ``class_statistic`` summed over every class (no gradient)."""

    def nontarget_lse(self, features: Tensor, ctx: MarginContext) -> Tensor:
        """(B,) the log-sum-exp of ``nontarget_logits`` over every class but each sample's target."""


def autocast_disabled(device_type: str) -> torch.autocast:
    """A context that disables autocast, so the head's arithmetic stays in float32 under bf16/fp16 training."""
    return torch.autocast(device_type=device_type, enabled=False)


def normalize_eps(dtype: torch.dtype) -> float:
    """The norm floor of L2 normalisation: the gradient of x/||x|| w.r.t. x is ~1/max(||x||, eps).

    fp16 embeddings get their gradient back in fp16 (max 65504): with logit scales up to 256 a norm floor of
    1e-2 keeps that gradient representable. Below it an fp16 embedding has no reliable direction anyway
    (fp16 resolves ~1e-3 relative), so the cosine is shrunk towards 0 rather than the gradient overflowing.
    """
    return 1e-2 if dtype == torch.float16 else 1e-12


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64 (for references); every other floating dtype is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _excess_exponent(x: Tensor) -> Tensor:
    """(B, 1) the power of two each row of (B, D) ``x`` is above 2^50 by (0 for every ordinary row)."""
    amax = x.detach().abs().amax(dim=1, keepdim=True)
    return torch.clamp(torch.ceil(torch.log2(amax)) - _NORM_SAFE_MAX_EXPONENT, min=0.0)


def overflow_safe(x: Tensor) -> Tensor:
    """(B, D) ``x`` with each row whose largest |value| is above 2^50 multiplied by a power of two (exact) that
    brings it below: its direction is unchanged and its norm no longer overflows in float32 (``||x||`` of a row of
    1e30s is inf, which made SphereFace's logits inf - inf = NaN). Other rows are multiplied by exactly 1."""
    return x * torch.exp2(-_excess_exponent(x))


def row_norms(x: Tensor) -> Tensor:
    """(B,) the L2 norms of the rows of (B, D) ``x``, finite for every finite row (see :func:`overflow_safe`)."""
    exponent = _excess_exponent(x)
    return (x * torch.exp2(-exponent)).norm(dim=1) * torch.exp2(exponent[:, 0])


def sin_from_cos(cos: Tensor) -> Tensor:
    """``sin(theta)`` for theta in [0, pi] from ``cos(theta)``, with the square root kept off zero."""
    return torch.sqrt(torch.clamp(1.0 - cos * cos, min=SIN_EPS))


def angle(cos: Tensor) -> Tensor:
    """theta in [0, pi] from a cosine; ``atan2(sin, cos)`` has a finite gradient everywhere, unlike ``acos``."""
    return torch.atan2(sin_from_cos(cos), cos)


def arc_margin(cos: Tensor, margin: Tensor | float) -> Tensor:
    """ArcFace's ``cos(theta + m)``, kept monotonic past pi: where ``theta + m > pi`` it is ``cos - m sin m``.

    The fallback is insightface's (the first-order expansion of cos(theta + m) at theta = pi - m); it keeps the
    target logit decreasing in theta on [0, pi], so the margin never rewards a wrong prediction.
    ``margin`` is in radians, a float or a per-sample tensor (ElasticFace).
    """
    margin = torch.as_tensor(margin, dtype=cos.dtype, device=cos.device)
    cos_m, sin_m = torch.cos(margin), torch.sin(margin)
    shifted = cos * cos_m - sin_from_cos(cos) * sin_m
    past_pi = cos < -cos_m  # theta > pi - m
    return torch.where(past_pi, cos - margin * sin_m, shifted)


class _CentresAfterInit(type(nn.Module)):
    """Builds a loss's centres once its outermost ``__init__`` has returned (a post-init step).

    ``weight_shape`` and ``reset_parameters`` may then read every field a subclass sets in its own constructor
    (sub-centre ArcFace's k, SphereFace2's bias), in the usual order: ``super().__init__`` first.
    """

    def __call__(cls, *args, **kwargs):
        loss = super().__call__(*args, **kwargs)
        loss.build_centres()
        return loss

    @property
    def __signature__(cls) -> inspect.Signature:
        """The constructor's parameters (``inspect.signature`` of the class would otherwise report this
        ``__call__``'s ``*args, **kwargs``; the registry reads loss parameters from it)."""
        signature = inspect.signature(cls.__init__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])  # without self


class MarginLoss(nn.Module, metaclass=_CentresAfterInit):
    """Base class: owns the class centres ``weight`` (num_classes, embedding_size) and the shared pipeline.

    Subclasses implement ``target_transform`` (and, when non-targets are modulated, ``nontarget_logits``), and
    the context hooks ``update_state`` / ``add_extras`` when they keep running state or per-sample extras.
    ``scale`` is the logit scale s; subclasses without a fixed scale document what ``scale`` means.
    ``weight`` is created and initialised after the subclass constructor (:meth:`build_centres`).
    """

    #: whether ``logits`` has a cross-entropy meaning (heads rely on it); SphereFace2 is one-vs-all.
    objective: str = "softmax"
    #: whether the embeddings are L2-normalised before the similarity (False for plain softmax).
    normalizes_features: bool = True
    #: whether ``make_context`` needs ``class_statistic`` summed over all classes (AdaCos's dynamic scale).
    needs_class_statistic: bool = False

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 1.0) -> None:
        super().__init__()
        if not isinstance(embedding_size, int) or embedding_size < 1:
            raise ValueError(f"embedding_size must be a positive int, got {embedding_size!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.scale = float(scale)
        # Registered now so that ``weight`` stays the first parameter (optimizer and checkpoint order).
        self.register_parameter("weight", None)

    # ------------------------------------------------------------------ construction
    def build_centres(self) -> None:
        """Create ``weight`` of ``weight_shape()`` and ``reset_parameters``; called after the constructor."""
        self.weight = nn.Parameter(torch.empty(self.weight_shape()))
        self.reset_parameters()

    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the class centres; dimension 0 is always the class (heads slice it)."""
        return (self.num_classes, self.embedding_size)

    def reset_parameters(self) -> None:
        self.init_centres(self.weight)

    @staticmethod
    def init_centres(tensor: Tensor, generator: torch.Generator | None = None) -> None:
        """The class-centre initialisation, N(0, 0.01^2) as insightface's heads (in place)."""
        nn.init.normal_(tensor, std=0.01, generator=generator)

    #: rows per block of :meth:`init_rows` (part of its definition: changing it changes the centres)
    INIT_BLOCK_ROWS = 4096

    @torch.no_grad()
    def init_rows(self, first_class: int, seed: int) -> None:
        """Re-initialise the centres as rows [first_class, first_class + n) of a C-row matrix drawn block by
        block from (seed, block): the same centres however the classes are split over ranks."""
        block_rows, n = self.INIT_BLOCK_ROWS, self.weight.shape[0]
        for block in range(first_class // block_rows, (first_class + n - 1) // block_rows + 1):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
            values = torch.empty((block_rows, *self.weight.shape[1:]), dtype=self.weight.dtype)
            self.init_centres(values, generator)
            lo, hi = max(first_class, block * block_rows), min(first_class + n, (block + 1) * block_rows)
            self.weight[lo - first_class:hi - first_class] = values[lo - block * block_rows:hi - block * block_rows]

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, scale={self.scale}"

    # ------------------------------------------------------------------ input checks
    def check_inputs(self, embeddings: Tensor, labels: Tensor) -> None:
        """Raise ``ValueError`` naming what is wrong with the inputs and how to fix it."""
        if not torch.is_tensor(embeddings) or not embeddings.is_floating_point():
            kind = embeddings.dtype if torch.is_tensor(embeddings) else type(embeddings).__name__
            raise ValueError(f"embeddings must be a floating-point tensor (B, D), got {kind}; call .float()")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must have shape (B, {self.embedding_size}), got {tuple(embeddings.shape)}; "
                f"the loss was built with embedding_size={self.embedding_size}"
            )
        if not torch.is_tensor(labels) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError("labels must be an integer tensor (B,) of class indices (e.g. torch.long)")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"labels must have shape ({embeddings.shape[0]},) to match the embeddings, "
                f"got {tuple(labels.shape)}"
            )
        if embeddings.shape[0] == 0:
            raise ValueError(EMPTY_BATCH_MESSAGE)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got min {int(labels.min())} and max "
                f"{int(labels.max())}; build the loss with num_classes covering every identity"
            )
        if not torch.isfinite(embeddings).all():
            raise ValueError("embeddings contain NaN or Inf; check the backbone's output (learning rate, precision)")

    # ------------------------------------------------------------------ element-wise pieces
    def features(self, embeddings: Tensor) -> Tensor:
        """(B, D) the L2-normalised embeddings (raw for plain softmax), in the compute dtype.

        The compute dtype is float32 for every input precision (bf16, fp16, float32), and float64 for float64
        input so the family can be checked against float64 references.
        """
        x = embeddings.to(compute_dtype(embeddings))
        if not self.normalizes_features:
            return x
        return F.normalize(overflow_safe(x), dim=1, eps=normalize_eps(embeddings.dtype))

    def similarity(self, features: Tensor, rows: Tensor, classes: Tensor | None = None) -> Tensor:
        """(B, c) cosines of ``features`` (B, D) with class centres ``rows`` (c, D), in ``features``' dtype.

        ``classes`` (c,) are the indices of ``rows`` among all classes (None: all of them, in order); only
        losses with per-class terms (plain softmax's bias) use it. Heads pass it for chunks and samples.
        """
        return features @ F.normalize(rows.to(features.dtype), dim=-1).t()

    def target_similarity(self, features: Tensor, labels: Tensor) -> Tensor:
        """(B,) the similarity of each sample with its own class centre, without the (B, C) matrix."""
        rows = F.normalize(self.weight[labels].to(features.dtype), dim=-1)
        return (features * rows).sum(dim=1)

    def class_statistic(self, similarity: Tensor, target_mask: Tensor) -> Tensor:
        """(B,) a per-sample sum over classes that a loss needs before its logits (AdaCos's B_avg term).

        Only called when ``needs_class_statistic``; it must be additive over class slices, so a chunked or
        sharded head sums it chunk by chunk (under no_grad) and passes the total to ``make_context``.
        ``target_mask`` (B, c) marks each sample's own class within the slice.
        """
        raise NotImplementedError

    def make_context(
        self, embeddings: Tensor, labels: Tensor, target_similarity: Tensor, class_statistic: Tensor | None = None
    ) -> MarginContext:
        """Per-sample quantities, built by the hooks in their fixed order (each called once per forward):
        ``update_state`` (training mode only) -> ``add_extras`` -> ``target_transform``.

        ``embeddings`` (B, D) as given to the loss; ``target_similarity`` (B,) from ``similarity``;
        ``class_statistic`` (B,) the summed ``class_statistic`` when ``needs_class_statistic``.
        """
        norms = row_norms(embeddings.to(target_similarity.dtype))
        ctx = MarginContext(labels=labels, norms=norms, target_similarity=target_similarity,
                            target_logit=target_similarity, class_statistic=class_statistic)
        if self.training:
            self.update_state(ctx)
        self.add_extras(ctx)
        ctx.target_logit = self.target_transform(target_similarity, ctx)
        return ctx

    def update_state(self, ctx: MarginContext) -> None:
        """Advance the running state (buffers) from this batch, before anything reads it; training mode only.

        ``ctx`` holds labels, norms, target_similarity and class_statistic; nothing here carries a gradient.
        """

    def add_extras(self, ctx: MarginContext) -> None:
        """Fill ``ctx.extras`` (per-sample tensors the transforms read) and ``ctx.regularizer``; none by default."""

    def target_transform(self, cos: Tensor, ctx: MarginContext) -> Tensor:
        """(B,) the target-class logit from the target cosine: margin and scale applied."""
        return self.scale * cos

    def nontarget_logits(self, similarity: Tensor, ctx: MarginContext) -> Tensor:
        """(B, c) the logits of non-target classes from their cosines: scale (and any modulation) applied."""
        return self.scale * similarity

    def probability_transform(self, cross_entropy: Tensor, ctx: MarginContext) -> Tensor:
        """(B,) the per-sample loss from the per-sample cross-entropy ``-log p_y`` (B,); the identity here.

        A transform of the target probability (AM-LFS's tau) is element-wise given ``-log p_y``, which every
        head has once it has the log-sum-exp over all classes (dense, chunked, sharded).
        """
        return cross_entropy

    # ------------------------------------------------------------------ the driver
    def run_pipeline(
        self, embeddings: Tensor, labels: Tensor, source: SimilaritySource
    ) -> tuple[Tensor, MarginContext]:
        """Steps 1-3 for every head: (features (B, D), context). ``labels`` (B,) long, already checked.

        Call under ``autocast_disabled``; the head then reduces ``nontarget_logits`` with ``ctx``.
        """
        feats = self.features(embeddings)
        target_sim = source.target_similarity(feats)
        statistic = source.class_statistic(feats) if self.needs_class_statistic else None
        return feats, self.make_context(embeddings, labels, target_sim, statistic)

    def loss_from_source(self, embeddings: Tensor, labels: Tensor, source: SimilaritySource) -> Tensor:
        """The mean loss of a head that never holds every logit (chunked, sampled, sharded): the driver, then
        ``loss_from_lse`` of the source's non-target log-sum-exp. Float32 with autocast disabled."""
        with autocast_disabled(embeddings.device.type):
            feats, ctx = self.run_pipeline(embeddings, labels, source)
            return self.loss_from_lse(source.nontarget_lse(feats, ctx), ctx)

    def loss_from_lse(self, lse_nontarget: Tensor, ctx: MarginContext) -> Tensor:
        """Mean loss from the non-target log-sum-exp (B,): the per-sample cross-entropy is
        ``logaddexp(lse_nt, t) - t`` with t the target logit, as the dense one."""
        target = ctx.target_logit
        return self.mean_loss(torch.logaddexp(lse_nontarget, target) - target, ctx)

    def mean_loss(self, cross_entropy: Tensor, ctx: MarginContext) -> Tensor:
        """Mean over the batch of ``probability_transform`` of the per-sample cross-entropy (B,) plus the
        regulariser: the last step of every head (required, so no head can skip the transform)."""
        per_sample = self.probability_transform(cross_entropy, ctx)
        if ctx.regularizer is not None:
            per_sample = per_sample + ctx.regularizer
        return per_sample.mean()

    # ------------------------------------------------------------------ dense path
    def dense(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, MarginContext]:
        """The (B, C) float32 logits and the per-sample context of one forward pass over all classes."""
        self.check_inputs(embeddings, labels)
        labels = labels.long()
        source = DenseSimilarity(self, labels)
        with autocast_disabled(embeddings.device.type):
            _, ctx = self.run_pipeline(embeddings, labels, source)
            return source.logits(ctx), ctx

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """(B, C) float32 logits, margin and scale applied; their cross-entropy with ``labels`` is the loss.

        In training mode this advances the loss's running state exactly as ``forward`` does.
        """
        return self.dense(embeddings, labels)[0]

    def loss_from_logits(self, logits: Tensor, ctx: MarginContext) -> Tensor:
        """Mean loss from dense logits (B, C); a softmax cross-entropy plus the context's regulariser."""
        return self.mean_loss(F.cross_entropy(logits, ctx.labels, reduction="none"), ctx)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The mean loss (scalar, float32) of embeddings (B, D) with integer labels (B,)."""
        logits, ctx = self.dense(embeddings, labels)
        with autocast_disabled(embeddings.device.type):
            return self.loss_from_logits(logits, ctx)


class DenseSimilarity:
    """The dense head's source: the (B, C) similarity to every class at once (or given, ``similarity``).

    ``labels`` (B,) long. The similarity is computed at ``target_similarity`` and kept for the other steps.
    """

    def __init__(self, loss: MarginLoss, labels: Tensor, similarity: Tensor | None = None) -> None:
        self.loss, self.labels, self.similarity = loss, labels, similarity

    def target_similarity(self, features: Tensor) -> Tensor:
        if self.similarity is None:
            self.similarity = self.loss.similarity(features, self.loss.weight)
        return self.similarity.gather(1, self.labels[:, None]).squeeze(1)

    def target_mask(self) -> Tensor:
        """(B, C) bool, each sample's own class."""
        return F.one_hot(self.labels, self.similarity.shape[1]).bool()

    def class_statistic(self, features: Tensor) -> Tensor:
        return self.loss.class_statistic(self.similarity, self.target_mask())

    def nontarget_lse(self, features: Tensor, ctx: MarginContext) -> Tensor:
        logits = self.loss.nontarget_logits(self.similarity, ctx)
        return torch.logsumexp(logits.masked_fill(self.target_mask(), float("-inf")), dim=1)

    def logits(self, ctx: MarginContext) -> Tensor:
        """(B, C) the non-target logits with each target column replaced by ``ctx.target_logit``."""
        out = self.loss.nontarget_logits(self.similarity, ctx)
        return out.scatter(1, self.labels[:, None], ctx.target_logit[:, None].to(out.dtype))
