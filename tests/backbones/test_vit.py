"""Face ViTs against arcface_torch's published costs and a float64 reference written from the architecture."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from marginface import backbones
from marginface.backbones.vit import (
    VARIANTS,
    Block,
    VisionTransformer,
    _keep_random_tokens,
    _restore_with_mask_token,
    drop_path,
)

# arcface_torch README, table "ViT For Face Recognition", FLOPs column (G; multiply-accumulates incl. attention).
PUBLISHED_GMACS = {"vit_t": 1.5, "vit_s": 5.7, "vit_b": 11.4, "vit_l": 25.3}


def _expected_parameters(width: int, depth: int, embedding_size: int = 512) -> int:
    """The layer list written out: patch conv, position embedding, blocks, final LN, mask token, feature head."""
    patch = 3 * 81 * width + width
    block = 2 * 2 * width + 3 * width * width + width * width + width + 4 * width * width + 4 * width \
        + 4 * width * width + width  # 2 LN, qkv (no bias), proj, fc1, fc2
    head = 144 * width * width + 2 * width + width * embedding_size + 2 * embedding_size
    return patch + 144 * width + depth * block + 2 * width + width + head


@functools.cache
def _meta(name: str) -> tuple[nn.Module, float]:
    with torch.device("meta"):
        model = backbones.create(name).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 112, 112))
    return model, counter.get_total_flops() / 2


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parameters_follow_the_layer_list_and_macs_match_arcface_torch(name: str) -> None:
    model, macs = _meta(name)
    width, depth, _, _ = VARIANTS[name]
    assert sum(p.numel() for p in model.parameters()) == _expected_parameters(width, depth)
    assert macs / 1e9 == pytest.approx(PUBLISHED_GMACS[name], rel=0.01)


def test_variants_match_arcface_torch_get_model() -> None:
    # (embed_dim, depth, drop_path_rate, mask_ratio) of get_model's vit_t, vit_s, vit_b, vit_l_dp005_mask_005
    assert VARIANTS == {"vit_t": (256, 12, 0.1, 0.1), "vit_s": (512, 12, 0.1, 0.1), "vit_b": (512, 24, 0.1, 0.1),
                        "vit_l": (768, 24, 0.05, 0.05)}
    model = backbones.create("vit_t")
    assert model.patch_embed.kernel_size == (9, 9) and model.patch_embed.stride == (9, 9)
    assert model.pos_embed.shape == (1, 144, 256)
    assert [b.drop_path_rate for b in model.blocks] == pytest.approx([0.1 * i / 11 for i in range(12)])
    assert model.blocks[0].attn.heads == 8 and isinstance(model.blocks[0].mlp[1], nn.ReLU6)


def _randomise(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
        if isinstance(m, nn.LayerNorm | nn.modules.batchnorm._BatchNorm) and m.bias is not None:
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


def _ln(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _attention(x: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """Per head, per query: softmax over keys of q.k / sqrt(d), written as explicit exponentials."""
    batch, tokens, width = x.shape
    d = width // attn.heads
    qkv = x @ attn.qkv.weight.T
    q, k, v = qkv[..., :width], qkv[..., width:2 * width], qkv[..., 2 * width:]
    out = torch.zeros_like(x)
    for h in range(attn.heads):
        sl = slice(h * d, (h + 1) * d)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
        weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
        out[..., sl] = (weights / weights.sum(-1, keepdim=True)) @ v[..., sl]
    return out @ attn.proj.weight.T + attn.proj.bias


def _block_reference(x: torch.Tensor, block: Block) -> torch.Tensor:
    x = x + _attention(_ln(x, block.norm1), block.attn)
    fc1, fc2 = block.mlp[0], block.mlp[2]
    hidden = (_ln(x, block.norm2) @ fc1.weight.T + fc1.bias).clamp(0, 6)  # ReLU6
    return x + hidden @ fc2.weight.T + fc2.bias


def _bn(x: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    gamma = torch.ones_like(bn.running_mean) if bn.weight is None else bn.weight
    return gamma * (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) + bn.bias


def _model_reference(model: VisionTransformer, faces: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward: 9x9 patches cut by hand, position embedding, blocks, LN, the two-FC head."""
    patches = faces[:, :, :108, :108].unfold(2, 9, 9).unfold(3, 9, 9)  # (B, 3, 12, 12, 9, 9)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(faces.shape[0], 144, 3 * 81)
    conv = model.patch_embed
    x = patches @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias + model.pos_embed
    for block in model.blocks:
        x = _block_reference(x, block)
    x = _ln(x, model.norm).reshape(faces.shape[0], -1)
    head = model.head
    return _bn(_bn(x @ head.fc1.weight.T, head.bn1) @ head.fc2.weight.T, head.bn2)


def test_tiny_vit_matches_float64_reference(faces: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(width=16, depth=2, embedding_size=8, heads=4, drop_path=0.2, mask_ratio=0.3)
    _randomise(model)
    model = model.double().eval()  # eval: no drop-path, no masking
    x = faces.double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _model_reference(model, x), rtol=1e-9, atol=1e-9)


def test_masking_keeps_a_random_subset_and_restores_positions() -> None:
    torch.manual_seed(0)
    tokens = torch.arange(2 * 144, dtype=torch.float64).reshape(2, 144, 1).expand(2, 144, 3).clone()
    kept, restore = _keep_random_tokens(tokens, 0.1)
    assert kept.shape == (2, 129, 3)  # int(144 * 0.9), arcface_torch's len_keep
    mask_token = torch.full((1, 1, 3), -1.0, dtype=torch.float64)
    full = _restore_with_mask_token(kept, restore, mask_token)
    for b in range(2):
        kept_ids = set(kept[b, :, 0].tolist())
        assert len(kept_ids) == 129 and kept_ids <= set(tokens[b, :, 0].tolist())
        for n in range(144):  # every kept token back at its position, every removed one is the mask token
            expected = tokens[b, n] if tokens[b, n, 0].item() in kept_ids else mask_token[0, 0]
            torch.testing.assert_close(full[b, n], expected)
    assert not torch.equal(restore[0], restore[1])  # a different draw per sample


def test_masking_is_training_only_and_trains_the_mask_token(faces: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(width=16, depth=1, embedding_size=8, heads=2, mask_ratio=0.5)
    model(faces).square().sum().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert VisionTransformer(width=16, depth=1, mask_ratio=0.0).mask_token is None


def test_drop_path_zeroes_whole_samples_and_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    x = torch.ones(20_000, 3, 2)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.reshape(20_000, -1)
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (per_sample == per_sample[:, :1]).all()  # the whole branch of a sample is dropped or kept
    assert per_sample[:, 0].mean().item() == pytest.approx(1.0, abs=0.02)
    assert drop_path(x, 0.25, training=False) is x


@pytest.mark.parametrize(("kwargs", "message"),
                         [({"mask_ratio": 1.0}, "mask_ratio"), ({"drop_path": -0.1}, "drop_path"),
                          ({"heads": 3}, "multiple")])
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VisionTransformer(width=16, depth=1, **kwargs)


def test_unknown_variant_is_refused() -> None:
    from marginface.backbones.vit import vit

    with pytest.raises(ValueError, match="vit_t"):
        vit("vit_h")


def test_no_weight_decay_names_the_learned_tokens() -> None:
    model = backbones.create("vit_t")
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {"pos_embed", "mask_token"} and model.no_weight_decay() <= set(names)


def test_vit_t_training_step_reaches_every_parameter_and_eval_is_per_sample(faces: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = backbones.create("vit_t", dropout=0.2)
    out = model(faces)
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    (nn.functional.normalize(out, dim=1) @ torch.randn(512, 4)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(faces[1:])[0], model(faces)[1], rtol=1e-4, atol=1e-5)
        expected = model(faces)
        got = model.to(memory_format=torch.channels_last)(faces.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_safetensors_round_trip_and_dynamo_full_graph(tmp_path, faces: torch.Tensor) -> None:
    from marginface.backbones import load_weights, save_weights

    def tiny() -> VisionTransformer:
        return VisionTransformer(width=32, depth=2, embedding_size=16, heads=4)

    torch.manual_seed(0)
    source = tiny().eval()
    save_weights(source, tmp_path / "vit.safetensors")
    torch.manual_seed(1)
    target = load_weights(tiny(), tmp_path / "vit.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(target(faces), source(faces), rtol=0, atol=0)
    torch._dynamo.reset()
    compiled = torch.compile(source.train(), backend="eager", fullgraph=True)  # masking + drop-path traced too
    out = compiled(faces)
    assert out.shape == (2, 16) and torch.isfinite(out).all()
