"""PyTorch state dicts of other repositories, renamed onto our backbones (tensors unchanged, reshaped at most).

Recognised layouts (:func:`identify`), each documented key by key in docs/inference.md:

- ``"iresnet"``: insightface arcface_torch IResNets (``r18`` ... ``r200``), see :mod:`.weights`.
- ``"arcface_torch_mbf"``: arcface_torch's MobileFaceNet (``mbf``: scale 2, blocks (1, 4, 6, 2);
  ``mbf_large``: scale 4, blocks (2, 8, 12, 4)) -> our ``mobilefacenet`` with the same ``scale``/``blocks``.
- ``"arcface_torch_vit"``: arcface_torch's ViTs (``vit_t/s/b/l`` and their WebFace42M presets) -> our ``vit_*``.
- ``"casia_mobilefacenet"``: the ``conv_23 / conv_3.model.i / sep / GDC_dw / features / last_bn`` MobileFaceNet
  layout (the shared CASIA-WebFace model, keys under ``arcface.``) -> our ``mobilefacenet``.

Two facts make the MobileFaceNets fit ours exactly: their embedding FC has no bias (ours gets a zero bias) and
they have no BatchNorm over the 7x7 map before the GDC (ours gets the identity: mean 0, var 1 - eps, scale 1,
shift 0).  Their last BatchNorm learns its scale, so ours is built with ``fix_gamma=False``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .vit import VARIANTS as VIT_VARIANTS

ARCHITECTURES = ("iresnet", "arcface_torch_mbf", "arcface_torch_vit", "casia_mobilefacenet")
SUPPORTED_TEXT = ("insightface arcface_torch IResNet (r18-r200), MobileFaceNet (mbf, mbf_large) and ViT "
                  "(vit_t/s/b/l), and the CASIA MobileFaceNet layout (conv_23, conv_3.model.i, sep, GDC_dw, "
                  "features, last_bn)")
_BLOCK_PARTS = ("expand", "depthwise", "project")  # our Bottleneck's three convs, in their order
_BN_EPS = 1e-5


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a DDP ``module.`` prefix and a prefix every key shares when it names a wrapper (``arcface.``,
    ``backbone.``, ``model.``), so the keys start at the architecture."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for wrapper in ("arcface.", "backbone.", "model.", "net."):
        if state and all(k.startswith(wrapper) for k in state):
            return {k[len(wrapper):]: v for k, v in state.items()}
    return state


def identify(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which of :data:`ARCHITECTURES` a (prefix-stripped) state dict is, from its key names; None if none."""
    if "layer1.0.conv1.weight" in state and "conv1.weight" in state:
        return "iresnet"
    if "layers.0.layers.0.weight" in state and "conv_sep.layers.0.weight" in state:
        return "arcface_torch_mbf"
    if "patch_embed.proj.weight" in state and "pos_embed" in state:
        return "arcface_torch_vit"
    if "conv_23.conv.conv.weight" in state and "GDC_dw.weight" in state:
        return "casia_mobilefacenet"
    return None


def describe_unknown(state: Mapping[str, torch.Tensor]) -> str:
    """A sentence naming what a state dict looks like, for errors about a layout we do not load."""
    roots = sorted({k.split(".")[0] for k in state})
    return (f"its top-level modules are {roots[:12]}{' ...' if len(roots) > 12 else ''} ({len(state)} tensors), "
            f"which match none of the layouts marginface loads: {SUPPORTED_TEXT}")


def _identity_map_bn(channels: int) -> dict[str, torch.Tensor]:
    return {"head.map_bn.weight": torch.ones(channels), "head.map_bn.bias": torch.zeros(channels),
            "head.map_bn.running_mean": torch.zeros(channels),
            "head.map_bn.running_var": torch.full((channels,), 1.0 - _BN_EPS),
            "head.map_bn.num_batches_tracked": torch.zeros((), dtype=torch.long)}


@torch.no_grad()
def set_identity_map_bn(model: torch.nn.Module) -> None:
    """Make a MobileFaceNet's BatchNorm over the 7x7 map (``head.map_bn``) the identity in eval mode, as the
    layouts without that layer need."""
    for name, value in _identity_map_bn(model.head.map_bn.num_features).items():
        getattr(model.head.map_bn, name.removeprefix("head.map_bn.")).copy_(value)


def _ids(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct integers fill ``{}`` in keys matching ``pattern`` (a regex with one ``(\\d+)``)."""
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# ------------------------------------------------------------------------------------------ arcface_torch mbf
def arcface_torch_mbf(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], int, dict[str, torch.Tensor]]:
    """arcface_torch MobileFaceNet -> (our mobilefacenet kwargs, D, state under our names).

    Theirs: ``layers.0`` conv block, ``layers.1`` the 64-group conv (or a Residual of ``blocks[0]``), then
    ``layers.2/4/6`` stride-2 DepthWise blocks and ``layers.3/5/7`` Residuals, ``conv_sep``, and
    ``features`` = GDC (``layers.0.layers.0/1``), flatten, Linear (``layers.2``), BatchNorm1d (``layers.3``).
    A block's ``layers.{0,1,2}`` are our ``expand``/``depthwise``/``project``; a conv block's
    ``layers.{0,1,2}`` our ``{0,1,2}`` (conv, BN, PReLU).
    """
    scale = state["layers.0.layers.0.weight"].shape[0] // 64
    residual_first = "layers.1.layers.0.layers.0.layers.0.weight" in state
    blocks = [_ids(state, r"layers\.1\.layers\.(\d+)\.layers\.0\.") if residual_first else 1]
    blocks += [_ids(state, rf"layers\.{n}\.layers\.(\d+)\.layers\.0\.") for n in (3, 5, 7)]
    starts = {2: 0, 3: 1, 4: 1 + blocks[1], 5: 2 + blocks[1], 6: 2 + blocks[1] + blocks[2],
              7: 3 + blocks[1] + blocks[2]}  # our block index of their layers.n (and its first residual)
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours[_mbf_key(key, residual_first, starts)] = value
    fc = ours["head.fc.weight"]
    ours["head.fc.bias"] = torch.zeros(fc.shape[0], dtype=fc.dtype)
    ours.update(_identity_map_bn(512))
    kwargs = {"output": "E", "fix_gamma": False, "scale": int(scale), "blocks": blocks}
    return kwargs, int(fc.shape[0]), ours


def _mbf_key(key: str, residual_first: bool, starts: dict[int, int]) -> str:
    if m := re.fullmatch(r"layers\.0\.layers\.(\d)\.(.+)", key):
        return f"conv1.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"layers\.1\.layers\.(\d+)\.layers\.(\d)\.layers\.(\d)\.(.+)", key):
        return f"conv2_dw.{m[1]}.{_BLOCK_PARTS[int(m[2])]}.{m[3]}.{m[4]}"
    if not residual_first and (m := re.fullmatch(r"layers\.1\.layers\.(\d)\.(.+)", key)):
        return f"conv2_dw.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"layers\.([246])\.layers\.(\d)\.layers\.(\d)\.(.+)", key):
        return f"blocks.{starts[int(m[1])]}.{_BLOCK_PARTS[int(m[2])]}.{m[3]}.{m[4]}"
    if m := re.fullmatch(r"layers\.([357])\.layers\.(\d+)\.layers\.(\d)\.layers\.(\d)\.(.+)", key):
        return f"blocks.{starts[int(m[1])] + int(m[2])}.{_BLOCK_PARTS[int(m[3])]}.{m[4]}.{m[5]}"
    if m := re.fullmatch(r"conv_sep\.layers\.(\d)\.(.+)", key):
        return f"conv_sep.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"features\.layers\.0\.layers\.(\d)\.(.+)", key):
        return f"head.pool.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"features\.layers\.2\.(.+)", key):
        return f"head.fc.{m[1]}"
    if m := re.fullmatch(r"features\.layers\.3\.(.+)", key):
        return f"head.bn.{m[1]}"
    return key  # not part of the layout: reported as unexpected by the strict load


# ------------------------------------------------------------------------------------------ arcface_torch ViT
def arcface_torch_vit(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any], int, dict[str, torch.Tensor]]:
    """arcface_torch ViT -> (our registry name, kwargs, D, state under our names).

    Names differ only in ``patch_embed.proj`` (ours ``patch_embed``), the MLP's ``fc1``/``fc2`` (ours
    ``mlp.0``/``mlp.2``) and the ``feature.0..3`` head (ours ``head.fc1, bn1, fc2, bn2``).

    Raises:
        ValueError: a width/depth that is none of our variants, BatchNorm norm layers, or qkv with a bias.
    """
    width, depth = state["pos_embed"].shape[-1], _ids(state, r"blocks\.(\d+)\.")
    name = next((n for n, (w, d, _, _) in VIT_VARIANTS.items() if (w, d) == (width, depth)), None)
    if name is None:
        raise ValueError(f"an arcface_torch ViT of width {width} and depth {depth}, which is none of ours "
                         f"({ {n: v[:2] for n, v in VIT_VARIANTS.items()} }); vit_h and custom sizes do not load")
    if any(".norm1.bn." in k for k in state):
        raise ValueError("an arcface_torch ViT with norm_layer='bn' (BatchNorm over tokens); ours use LayerNorm")
    if "blocks.0.attn.qkv.bias" in state:
        raise ValueError("an arcface_torch ViT built with qkv_bias=True; ours (as arcface_torch's get_model) has none")
    renames = ((r"patch_embed\.proj\.", "patch_embed."), (r"\.mlp\.fc1\.", ".mlp.0."), (r"\.mlp\.fc2\.", ".mlp.2."),
               (r"^feature\.0\.", "head.fc1."), (r"^feature\.1\.", "head.bn1."), (r"^feature\.2\.", "head.fc2."),
               (r"^feature\.3\.", "head.bn2."))
    ours = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        ours[key] = value
    # the mask token only matters in training; keep it (and so a non-zero mask ratio) when the file has one
    kwargs = {"output": "E", "fix_gamma": False, "mask_ratio": 0.1 if "mask_token" in state else 0.0}
    return name, kwargs, int(ours["head.fc2.weight"].shape[0]), ours


# ------------------------------------------------------------------------------------------ CASIA layout
def casia_mobilefacenet(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], int, dict[str, torch.Tensor]]:
    """The ``conv_23 / conv_3.model.i / ... / features / last_bn`` MobileFaceNet -> (kwargs, D, our state).

    Key map (docs/inference.md): ``conv1``/``conv2_dw.{conv,bn,prelu}`` -> ``{0,1,2}``; stride-2 blocks
    ``conv_23``, ``conv_34``, ``conv_45`` and the residuals ``conv_3/4/5.model.i`` -> ``blocks.n`` in order,
    their ``conv``/``conv_dw``/``project`` -> ``expand``/``depthwise``/``project``; ``sep``, ``sep_bn``,
    ``prelu`` -> ``conv_sep.0/1/2``; ``GDC_dw``, ``GDC_bn`` -> ``head.pool.0/1``; ``features`` (a 1x1 conv
    without bias) -> ``head.fc.weight`` reshaped (D, 512), zero bias; ``last_bn`` (BatchNorm2d) -> ``head.bn``.
    """
    counts = [_ids(state, rf"conv_{n}\.model\.(\d+)\.") for n in (3, 4, 5)]
    order = ["conv_23", *(f"conv_3.model.{i}" for i in range(counts[0])), "conv_34",
             *(f"conv_4.model.{i}" for i in range(counts[1])), "conv_45",
             *(f"conv_5.model.{i}" for i in range(counts[2]))]
    blocks = {name: index for index, name in enumerate(order)}
    parts = {"conv": "expand", "conv_dw": "depthwise", "project": "project"}
    layers = {"conv": "0", "bn": "1", "prelu": "2"}
    singles = {"sep.": "conv_sep.0.", "sep_bn.": "conv_sep.1.", "prelu.": "conv_sep.2.", "GDC_dw.": "head.pool.0.",
               "GDC_bn.": "head.pool.1.", "last_bn.": "head.bn."}
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        if m := re.fullmatch(r"(conv1|conv2_dw)\.(conv|bn|prelu)\.(.+)", key):
            new = f"{m[1]}.{layers[m[2]]}.{m[3]}"
        elif m := re.fullmatch(r"(conv_\d\d|conv_\d\.model\.\d+)\.(conv|conv_dw|project)\.(conv|bn|prelu)\.(.+)", key):
            if m[1] in blocks:
                new = f"blocks.{blocks[m[1]]}.{parts[m[2]]}.{layers[m[3]]}.{m[4]}"
        elif key == "features.weight":
            new, value = "head.fc.weight", value.reshape(value.shape[0], -1)
        else:
            new = next((ours_ + key[len(t):] for t, ours_ in singles.items() if key.startswith(t)), key)
        ours[new] = value
    if "head.fc.weight" in ours:
        ours["head.fc.bias"] = torch.zeros(ours["head.fc.weight"].shape[0])
    ours.update(_identity_map_bn(512))
    scale = state["conv1.conv.weight"].shape[0] // 64 if "conv1.conv.weight" in state else 1
    kwargs = {"output": "E", "fix_gamma": False, "scale": int(scale), "blocks": [1, *counts]}
    size = int(state["features.weight"].shape[0]) if "features.weight" in state else 512
    return kwargs, size, ours
