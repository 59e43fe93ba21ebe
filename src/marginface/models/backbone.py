"""A model file as a backbone ``nn.Module`` under the evaluation contract: what ``marginface eval``, the cleaning
embedders and the trainer's validation feed (``(B, 3, 112, 112)`` RGB in [-1, 1], ``(x - 127.5) / 127.5``).

:func:`load_backbone` reads every format through :func:`marginface.models.load_model`; a model whose card asks
for another input is wrapped in :class:`EvalInputAdapter`, which applies the card's contract. Only a file
without a card (or one asked to load into another backbone) is read here, into the backbone the caller names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from marginface.models.card import InputContract, ModelCard, backbone_tensors
from marginface.models.load import load_model, read_card, read_tensors
from marginface.models.loaded import LoadedModel


class EvalInputAdapter(torch.nn.Module):
    """A loaded model behind the evaluation contract: ``(B, 3, S, S)`` RGB in [-1, 1] as ``(x - 127.5) / 127.5``
    -> ``(B, D)`` raw embeddings, whatever the model's own contract (channel order, mean/std, ONNX).

    ``marginface eval`` feeds that contract to every backbone; this undoes it to pixels and applies the card's,
    so a model normalised otherwise (an MXNet zoo model's ``(x - 127.5) / 128``) is evaluated as it was trained.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.loaded = loaded
        self.embedding_size = loaded.card.embedding_size
        if isinstance(loaded.runner, torch.nn.Module):
            self.model = loaded.runner  # registered, so .to(device) / .eval() reach it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.float() * 127.5 + 127.5
        if self.loaded.kind == "torch":
            return self.loaded.runner(self.loaded.normalise_input(pixels))
        out = self.loaded.runner(self.loaded.normalise_input(pixels).cpu().numpy())
        return torch.from_numpy(out).to(x.device)


def load_backbone_weights(model: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load a safetensors checkpoint into ``model`` (strict) and return it.

    The file may hold the backbone's state dict unprefixed, or a whole training state where the backbone's
    tensors are under ``backbone.`` (the other tensors — head, optimiser — are then ignored).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint {path} must be a .safetensors file (pickled checkpoints are not loaded)")
    state = backbone_tensors(read_tensors(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # torch's message lists every key (kilobytes): summarise it instead
        from marginface.errors import UserError

        raise UserError(mismatch_summary(model, state, path)) from err
    return model


def _card(path: Path) -> ModelCard | None:
    """The model card of a safetensors file (:func:`marginface.models.read_card`), None when it has none or one
    that does not parse."""
    try:
        return read_card(path)
    except ValueError:
        return None


def _card_hint(path: Path) -> str:
    """``' (its model card says: `name=X` `embedding_size=D`)'`` when the file carries a card (load_backbone's
    arguments; the CLI spells them as its flags)."""
    card = _card(path)
    if card is None:
        return ""
    return f" (its model card says: `name={card.backbone}` `embedding_size={card.embedding_size}`)"


def mismatch_summary(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> str:
    """Two lines on why ``state`` does not load into ``model``: counts of missing / unexpected keys and the first
    shape mismatch, then the fix in load_backbone's argument names (torch's own message lists every key)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(expected[k].shape), tuple(state[k].shape)) for k in expected
              if k in state and expected[k].shape != state[k].shape]
    facts = []
    if missing or unexpected:
        facts.append(f"{len(missing)} of the backbone's {len(expected)} tensors missing, {len(unexpected)} "
                     f"unexpected (e.g. {(missing or unexpected)[0]})")
    if shapes:
        key, want, got = shapes[0]
        facts.append(f"{len(shapes)} with another shape (e.g. {key}: checkpoint {got}, backbone {want})")
    size = getattr(model, "embedding_size", None)
    fix = ("another backbone: pass the `name` it was trained with" if missing or unexpected else
           f"another embedding size than `embedding_size={size}`: pass the checkpoint's")
    return f"checkpoint {path} does not fit this backbone: {'; '.join(facts)}.\nIt holds {fix}{_card_hint(path)}"


def load_backbone(name: str | None, checkpoint: str | Path, embedding_size: int | None = None) -> nn.Module:
    """Build the backbone and load ``checkpoint`` into it.

    ``name`` / ``embedding_size`` None or equal to the card's: the model the checkpoint's card describes, built by
    :func:`marginface.models.load_model` (kwargs, strict load, weights hash checked). A file without a card needs
    ``name`` (the embedding size defaults to 512). Values other than the card's win over it (a wrong one fails with
    the card's values in the message)."""
    from marginface import backbones
    from marginface.errors import UserError

    path = Path(checkpoint)
    if path.suffix != ".safetensors" and name is None:
        # a foreign model (MXNet zoo, arcface_torch .pth, ONNX): load_model reads it and its contract
        return EvalInputAdapter(load_model(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    card = _card(path) if path.suffix == ".safetensors" else None
    if card is None:
        if name is None:
            raise UserError(f"checkpoint {path} has no model card: pass `name` (and `embedding_size`, default 512)")
        return load_backbone_weights(backbones.create(name, embedding_size=embedding_size or 512), checkpoint)
    same_model = name in (None, card.backbone) and embedding_size in (None, card.embedding_size)
    if card.input != InputContract(flip_tta=card.input.flip_tta):
        # eval feeds RGB 112x112 in [-1, 1]; another contract is applied by the adapter, never ignored
        if not same_model:
            raise UserError(f"checkpoint {path}'s model card asks for another input ({card.input}) than eval feeds "
                            "(112x112 RGB, (x - 127.5) / 127.5); leave `name`/`embedding_size` out to use it")
        return EvalInputAdapter(load_model(path))
    if same_model:
        return load_model(path).runner
    model = backbones.create(name or card.backbone, embedding_size=embedding_size or card.embedding_size)
    return load_backbone_weights(model, checkpoint)
