"""Registry-wide sweep: every backbone and every output option honours the contract."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from marginface import backbones

NAMES = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mobilefacenet", "vit_t", "vit_s", "vit_b",
         "vit_l", "mobilenet", "densenet121", "tiny28"]
# Backbones cheap enough for real forward/backward passes in a 2-core CI run.
CHEAP = ["iresnet18", "mobilefacenet", "mobilenet", "densenet121", "tiny28"]
FINAL_CHANNELS = {"mobilenet": 1024, "densenet121": 1024, "tiny28": 128}


def test_available_lists_every_backbone_and_unknown_names_are_refused() -> None:
    assert backbones.available() == NAMES
    assert backbones.create_backbone is backbones.create
    with pytest.raises(ValueError, match="iresnet50"):
        backbones.create("resnet50")


@functools.cache
def _meta_model(name: str, output: str = "E", embedding_size: int = 128) -> nn.Module:
    """A backbone on the meta device: shapes only, no memory, no arithmetic (built once per test run)."""
    with torch.device("meta"):
        dropout = 0.0 if output == "A" else 0.2
        return backbones.create(name, embedding_size=embedding_size, output=output, dropout=dropout).eval()


def _meta_forward(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    with torch.device("meta"):
        return model(torch.empty(shape))


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_maps_faces_to_embedding_size(name: str) -> None:
    model = _meta_model(name)
    assert model.embedding_size == 128
    assert _meta_forward(model, (2, 3, 112, 112)).shape == (2, 128)


# The embedding layer is shared code; its options are swept on both trunk families (the deeper IR-ResNets
# differ from iresnet18 only in block counts, covered above and in test_iresnet.py).
@pytest.mark.parametrize("name", CHEAP)
@pytest.mark.parametrize("output", ["A", "B", "C", "D", "E"])
def test_every_output_option_maps_to_embedding_size(name: str, output: str) -> None:
    size = FINAL_CHANNELS.get(name, 512) if output == "A" else 128  # option A has no FC: D is the map's width
    model = _meta_model(name, output, size)
    assert model.embedding_size == size
    assert _meta_forward(model, (2, 3, 112, 112)).shape == (2, size)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_size_is_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\)"):
        _meta_forward(_meta_model(name), (2, 3, 128, 128))


@pytest.mark.parametrize("name", CHEAP)
def test_training_step_is_finite_and_reaches_every_parameter(name: str, faces: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = backbones.create(name, dropout=0.2)
    out = model(faces)
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    # a loss that depends on the direction, like the margin losses do after normalisation
    (nn.functional.normalize(out, dim=1) @ torch.randn(512, 4)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    dead = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0 and not n.endswith("fc.bias")]
    assert not dead, dead  # fc.bias feeds a BatchNorm in training mode, so its gradient is exactly ~0


@pytest.mark.parametrize("name", CHEAP)
def test_eval_mode_is_deterministic_and_per_sample(name: str, faces: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = backbones.create(name, dropout=0.4).eval()
    with torch.no_grad():
        first, second, alone = model(faces), model(faces), model(faces[1:])
    assert torch.equal(first, second)
    # an untrained DenseNet in eval mode (BN statistics 0 / 1) outputs ~1e7: tolerance relative to the scale
    torch.testing.assert_close(alone[0], first[1], rtol=1e-4, atol=1e-5 * max(1.0, float(first.abs().max())))


def test_channels_last_gives_the_same_embeddings(faces: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = backbones.create("mobilefacenet").eval()
    with torch.no_grad():
        expected = model(faces)
        model = model.to(memory_format=torch.channels_last)
        got = model(faces.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_checkpointing_gives_the_same_gradients_and_statistics(faces: torch.Tensor) -> None:
    models = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = backbones.create("mobilefacenet", checkpointing=checkpointing)
        model(faces).square().sum().backward()
        models.append(model)
    plain, checkpointed = models
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(b, a, msg=name)


@pytest.mark.slow
def test_dynamo_traces_the_whole_model_without_graph_breaks(faces: torch.Tensor) -> None:
    # backend="eager" checks tracing (fullgraph=True fails on any graph break) without a C++ compile.
    torch._dynamo.reset()
    model = backbones.create("mobilefacenet").eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(faces), model(faces))
