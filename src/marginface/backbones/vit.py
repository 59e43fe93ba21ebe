"""Face vision transformers for 112x112 input: ``vit_t``, ``vit_s``, ``vit_b``, ``vit_l``.

The architecture is the one insightface's arcface_torch trains on WebFace42M (``recognition/arcface_torch/
backbones/vit.py`` and the ``vit_*`` entries of ``backbones/__init__.py:get_model``; README table "ViT For Face
Recognition": 1.5 / 5.7 / 11.4 / 25.3 GFLOPs).  Written here from that description, not copied:

- patch embedding: a 9x9 convolution with stride 9 (with bias) maps the face to a 12x12 grid = 144 tokens of
  width C (112 // 9 = 12, so the last 4 pixel rows and columns are not seen, as in arcface_torch);
- a learned position embedding (1, 144, C), no class token;
- ``depth`` pre-norm blocks: x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x))); 8 heads, qkv without bias,
  MLP ratio 4 with ReLU6 (arcface_torch's activation, not GELU);
- a final LayerNorm over the tokens;
- the embedding head (``output="E"``, arcface_torch's "feature" head): flatten the 144 x C token map,
  FC(144*C -> C, no bias), BN1d, FC(C -> D, no bias), BN1d (eps 2e-5).  Like option E for a CNN it keeps
  every position (no pooling) and ends in a BN; the C-wide bottleneck factorises the FC over the flattened
  map as MobileFaceNet's GDC does.  Options A-D pool the tokens (mean over the 12x12 grid) and reuse
  :class:`~marginface.backbones.embedding.EmbeddingHead`;
- training-time token masking (``mask_ratio``, arcface_torch's default 0.1 for ViT-T/S/B): a random
  ``mask_ratio`` of each sample's tokens is dropped before the blocks (less compute, a regulariser) and a
  learned ``mask_token`` takes their place after the final norm, so the head still sees 144 positions.

Variants (width C, depth): T (256, 12), S (512, 12), B (512, 24), L (768, 24).  Defaults follow get_model:
drop-path 0.1 and mask 0.1 for T/S/B; L exists there only as ``vit_l_dp005_mask_005`` (0.05, 0.05).  The
WebFace42M ViT-T/S presets use drop-path 0.05 and no masking (``vit_t_dp005_mask0``): pass
``drop_path=0.05, mask_ratio=0.0``.

Differences, on purpose: arcface_torch forces the attention product and softmax to float32 inside the model
(``torch.cuda.amp.autocast(False)``); our models hold no precision logic (DESIGN.md rule 2), so attention runs
in whatever dtype the caller's autocast gives, through ``F.scaled_dot_product_attention`` (which accumulates its
softmax in float32 on CPU and in the fused CUDA kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import INPUT_SIZE, check_input, run_checkpointed
from .embedding import EmbeddingHead, FixedGammaBatchNorm1d

PATCH_SIZE = 9
GRID = INPUT_SIZE // PATCH_SIZE  # 12
NUM_PATCHES = GRID * GRID  # 144

# name -> (width C, depth, default drop-path rate, default mask ratio); 8 heads and MLP ratio 4 throughout.
VARIANTS: dict[str, tuple[int, int, float, float]] = {
    "vit_t": (256, 12, 0.1, 0.1),
    "vit_s": (512, 12, 0.1, 0.1),
    "vit_b": (512, 24, 0.1, 0.1),
    "vit_l": (768, 24, 0.05, 0.05),
}


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of a random ``rate`` of the samples, rescale the rest.

    (B, ...) -> (B, ...); the expectation over the random draw equals ``x``.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention: (B, N, C) -> (B, N, C); qkv without bias, output projection with bias."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        # (B, N, 3C) -> 3 x (B, heads, N, C / heads)
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C / heads)) v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))).  (B, N, C)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU6(), nn.Linear(hidden, width))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class TokenFeatureHead(nn.Module):
    """arcface_torch's ViT embedding head: (B, N, C) -> flatten -> FC(N*C -> C) - BN1d - FC(C -> D) - BN1d.

    Submodules: ``dropout`` (when > 0, before the first FC), ``fc1``, ``bn1``, ``fc2``, ``bn2``.
    """

    def __init__(self, tokens: int, width: int, embedding_size: int, dropout: float, fix_gamma: bool) -> None:
        super().__init__()
        if dropout > 0:
            self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(tokens * width, width, bias=False)
        self.bn1 = nn.BatchNorm1d(width, eps=2e-5)
        self.fc2 = nn.Linear(width, embedding_size, bias=False)
        last = FixedGammaBatchNorm1d if fix_gamma else nn.BatchNorm1d
        self.bn2 = last(embedding_size, eps=2e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        if hasattr(self, "dropout"):
            x = self.dropout(x)
        return self.bn2(self.fc2(self.bn1(self.fc1(x))))


class VisionTransformer(nn.Module):
    """Face ViT: (B, 3, 112, 112) in [-1, 1] -> (B, embedding_size).

    Args:
        width: C, the token width.
        depth: number of transformer blocks.
        embedding_size: D.
        dropout: dropout before the embedding head's first FC.
        output: ``"E"`` (arcface_torch's feature head, default) or ``"A"``..``"D"`` (token mean pooling, then
            the options of :mod:`marginface.backbones.embedding`).
        heads: attention heads (8 in every arcface_torch variant).
        mlp_ratio: MLP hidden width / C.
        drop_path: stochastic-depth rate of the last block; block i gets ``drop_path * i / (depth - 1)``.
        mask_ratio: fraction of tokens dropped per sample in training (0: none); see the module docstring.
        checkpointing: recompute each block's activations during backward (training memory saver).
        fix_gamma: option E's last BN1d with its scale fixed at 1 (arcface_torch learns it: default False).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        embedding_size: int = 512,
        dropout: float = 0.0,
        output: str = "E",
        heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        mask_ratio: float = 0.1,
        checkpointing: bool = False,
        fix_gamma: bool = False,
    ) -> None:
        super().__init__()
        _check_vit_args(width, depth, drop_path, mask_ratio)
        self.embedding_size, self.width = embedding_size, width
        self.mask_ratio, self.checkpointing = mask_ratio, checkpointing
        self.patch_embed = nn.Conv2d(3, width, PATCH_SIZE, stride=PATCH_SIZE)
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES, width))
        # stochastic depth grows linearly with depth (plain floats: works on the meta device too)
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if mask_ratio > 0 else None
        if output == "E":
            self.head = TokenFeatureHead(NUM_PATCHES, width, embedding_size, dropout, fix_gamma)
        else:
            self.head = EmbeddingHead(output, width, GRID, embedding_size, dropout, "avg", fix_gamma)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal (std 0.02) linears and tokens, zero biases, LayerNorm 1 / 0 (arcface_torch's)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that a recipe should not decay: the learned tokens."""
        return {"pos_embed", "mask_token"} if self.mask_token is not None else {"pos_embed"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) faces in [-1, 1] -> (B, embedding_size) embeddings (not normalised)."""
        check_input(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, 144, C)
        masking = self.training and self.mask_token is not None
        if masking:
            tokens, restore = _keep_random_tokens(tokens, self.mask_ratio)
        for block in self.blocks:
            tokens = run_checkpointed(block, tokens) if self.checkpointing and self.training else block(tokens)
        tokens = self.norm(tokens)
        if masking:
            tokens = _restore_with_mask_token(tokens, restore, self.mask_token)
        if isinstance(self.head, TokenFeatureHead):
            return self.head(tokens)
        # options A-D: the tokens as a (B, C, 12, 12) map, pooled by the shared embedding layer
        return self.head(tokens.transpose(1, 2).reshape(x.shape[0], self.width, GRID, GRID))


def _keep_random_tokens(tokens: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``int(N * (1 - mask_ratio))`` random tokens per sample.

    (B, N, C) -> (B, K, C) kept tokens, and ``restore`` (B, N): the permutation that puts [kept, removed]
    back into the original order.
    """
    batch, count, width = tokens.shape
    keep = int(count * (1 - mask_ratio))
    order = torch.rand(batch, count, device=tokens.device).argsort(dim=1)  # a random permutation per sample
    restore = order.argsort(dim=1)
    kept = torch.gather(tokens, 1, order[:, :keep, None].expand(-1, -1, width))
    return kept, restore


def _restore_with_mask_token(kept: torch.Tensor, restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """(B, K, C) kept tokens -> (B, N, C): removed positions hold ``mask_token``, original order restored."""
    batch, keep, width = kept.shape
    filler = mask_token.to(kept.dtype).expand(batch, restore.shape[1] - keep, width)
    full = torch.cat([kept, filler], dim=1)
    return torch.gather(full, 1, restore[:, :, None].expand(-1, -1, width))


def _check_vit_args(width: int, depth: int, drop_path: float, mask_ratio: float) -> None:
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be positive, got width={width}, depth={depth}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path is a probability in [0, 1), got {drop_path}")
    if not 0.0 <= mask_ratio < 1.0 or int(NUM_PATCHES * (1 - mask_ratio)) < 1:
        raise ValueError(f"mask_ratio must lie in [0, 1) and keep at least one of the {NUM_PATCHES} tokens, "
                         f"got {mask_ratio}")


def vit(name: str, **kwargs: object) -> VisionTransformer:
    """The arcface_torch variant ``name`` (``vit_t/s/b/l``); ``kwargs`` override its defaults."""
    if name not in VARIANTS:
        raise ValueError(f"no face ViT named {name!r}; available: {sorted(VARIANTS)}")
    width, depth, rate, ratio = VARIANTS[name]
    options: dict[str, object] = {"drop_path": rate, "mask_ratio": ratio, **kwargs}
    return VisionTransformer(width, depth, **options)  # type: ignore[arg-type]
