"""The CLI's one error style: a user error is one or two lines on stderr and exit code 2; --debug re-raises."""

from __future__ import annotations

import argparse

import pytest

from marginface.cli import main


def test_user_error_is_short_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--embeddings", "missing.npz", "--roc", ""])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("marginface eval: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(ValueError, match="--embeddings needs --pairs"):
        main(["--debug", "eval", "--embeddings", "missing.npz", "--roc", ""])


def _all_parsers(parser: argparse.ArgumentParser, name: str = "marginface"):
    """Every parser of the command line (sub-commands and their sub-commands), with its command words."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {word}")


def test_every_help_shows_the_defaults() -> None:
    """Each option with an informative default (not None / False / []) says it in --help."""
    from marginface.cli import build_parser

    checked = 0
    for name, parser in _all_parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = action.default
            if not action.option_strings or action.help == argparse.SUPPRESS or default is None \
                    or default is False or default == [] or default == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings[0]} has a default but no help text to show it"
            assert f"(default: {default})" in text, f"{name} {action.option_strings[0]}"
            checked += 1
    assert checked >= 20  # the walk reached the sub-commands


def test_losses_params_lists_each_loss_with_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    import inspect

    from marginface import losses

    assert main(["losses", "--params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == losses.available()
    for line in lines:
        name = line.split(":")[0]
        # independent reference: the factory's own signature
        signature = inspect.signature(losses.LOSSES[name]).parameters.values()
        expected = [f"{p.name}={p.default!r}" for p in signature if p.name not in ("embedding_size", "num_classes")]
        assert line == f"{name}: {', '.join(expected)}"
    assert "arcface: scale=64.0, margin=0.5, easy_margin=False" in lines


def test_wrong_backbone_or_size_is_two_lines(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong --backbone / --embedding-size used to print torch's 21 KB list of state-dict keys."""
    import torch
    from safetensors.torch import save_file

    from marginface import backbones
    from marginface.evaluation.embed import load_backbone

    torch.manual_seed(0)
    model = backbones.create("mobilefacenet", embedding_size=32)
    path = tmp_path / "m.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    for name, size in (("mobilefacenet", 64), ("iresnet18", 32)):
        with pytest.raises(ValueError) as err:
            load_backbone(name, path, size)
        lines = str(err.value).splitlines()
        assert len(lines) == 2 and lines[0].startswith(f"checkpoint {path} does not fit this backbone: ")
        assert len(str(err.value)) < 400
    assert "It holds another embedding size than `embedding_size=64`: pass the checkpoint's" in _message(
        load_backbone, "mobilefacenet", path, 64)
    assert "It holds another backbone: pass the `name` it was trained with" in _message(
        load_backbone, "iresnet18", path, 32)


def _message(function, *args) -> str:
    try:
        function(*args)
    except ValueError as err:
        return str(err)
    raise AssertionError("no error")


@pytest.mark.slow
def test_eval_reads_the_backbone_from_the_model_card(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A newcomer's `marginface eval --checkpoint best.safetensors --bins lfw.bin` used to stop at 'give --checkpoint
    and --backbone' although training writes the backbone into the file's card; a file without a card still
    needs --backbone, and says so."""
    import io

    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from marginface import backbones
    from marginface.data.bins import write_verification_bin
    from marginface.inference.card import InputContract, ModelCard, tensors_sha256

    torch.manual_seed(0)
    model = backbones.create("mobilefacenet", embedding_size=16)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    card = ModelCard(backbone="mobilefacenet", embedding_size=16, weights_sha256=tensors_sha256(state))
    save_file(state, str(tmp_path / "card.safetensors"), metadata=card.metadata())
    save_file(state, str(tmp_path / "bare.safetensors"))
    rng = np.random.default_rng(0)
    images = []
    for pixels in rng.integers(0, 256, (40, 112, 112, 3), dtype=np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    write_verification_bin(tmp_path / "v.bin", images, np.arange(20) % 2 == 0)

    def table(*model_args: str) -> str:
        assert main(["eval", *model_args, "--bins", str(tmp_path / "v.bin"), "--roc", "", "--json"]) == 0
        return capsys.readouterr().out

    from_card = table("--checkpoint", str(tmp_path / "card.safetensors"))
    given = table("--checkpoint", str(tmp_path / "bare.safetensors"), "--backbone", "mobilefacenet",
                  "--embedding-size", "16")
    assert from_card.replace("card", "bare") == given and '"accuracy"' in given
    assert main(["eval", "--checkpoint", str(tmp_path / "bare.safetensors"), "--bins", str(tmp_path / "v.bin"),
                 "--roc", ""]) == 2
    err = capsys.readouterr().err
    assert "bare.safetensors has no model card: pass --backbone (and --embedding-size, default 512)" in err
    bgr = ModelCard(backbone="mobilefacenet", embedding_size=16, weights_sha256=card.weights_sha256,
                    input=InputContract(channel_order="BGR"))
    save_file(state, str(tmp_path / "bgr.safetensors"), metadata=bgr.metadata())
    # another contract is applied (issue 29: foreign models), not ignored; overriding the backbone then is refused
    assert '"accuracy"' in table("--checkpoint", str(tmp_path / "bgr.safetensors"))
    assert main(["eval", "--checkpoint", str(tmp_path / "bgr.safetensors"), "--backbone", "iresnet18",
                 "--bins", str(tmp_path / "v.bin"), "--roc", ""]) == 2
    assert "asks for another input" in capsys.readouterr().err


def test_load_backbone_follows_the_cards_kwargs(tmp_path) -> None:
    """A ViT trained with mask_ratio 0 has no mask_token: built with the default kwargs it would not load; built
    from its card (backbone_kwargs) it does, and its weights are the saved ones."""
    import torch
    from safetensors.torch import save_file

    from marginface import backbones
    from marginface.evaluation.embed import load_backbone, load_backbone_weights
    from marginface.inference.card import ModelCard, tensors_sha256

    torch.manual_seed(0)
    model = backbones.create("vit_t", embedding_size=16, mask_ratio=0.0)
    state = {f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()}
    card = ModelCard(backbone="vit_t", embedding_size=16, backbone_kwargs={"mask_ratio": 0.0},
                     weights_sha256=tensors_sha256(model.state_dict()))  # the hash is over the unprefixed tensors
    save_file(state, str(tmp_path / "vit.safetensors"), metadata=card.metadata())
    loaded = load_backbone(None, tmp_path / "vit.safetensors")
    assert loaded.mask_token is None
    assert all(torch.equal(v, state[f"backbone.{k}"]) for k, v in loaded.state_dict().items())
    assert load_backbone("vit_t", tmp_path / "vit.safetensors").mask_token is None  # the card's kwargs, name given
    with pytest.raises(ValueError, match="does not fit this backbone"):  # the default kwargs: a mask_token too many
        load_backbone_weights(backbones.create("vit_t", embedding_size=16), tmp_path / "vit.safetensors")


# ----------------------------------------------------------------------------- every refusal on the one path
def _unsafe_pickle() -> Exception:
    from marginface.data.bins import UnsafePickleError

    return UnsafePickleError("refusing to unpickle posix.system from evil.bin")


def _full_disk_safetensors() -> Exception:
    """safetensors' error for a full disk while writing a checkpoint (its text as the audit met it)."""
    from safetensors import SafetensorError

    return SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                           'left on device" })')


def _full_disk_oserror() -> Exception:
    """What a write to a full disk raises (as built by Python from errno ENOSPC)."""
    import errno
    import os

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "g/.tmp-v000002-1-1/vectors.npy")


def _memory_error() -> Exception:
    import numpy as np

    try:
        np.empty(2**50, dtype=np.uint8)  # a header asking for a petabyte: numpy refuses before allocating
    except MemoryError as err:
        return err
    raise AssertionError("a petabyte was allocated")


@pytest.mark.parametrize(("make", "expected"), [
    (_unsafe_pickle, "refusing to unpickle posix.system"),
    (_full_disk_safetensors, "the disk is full; free space (or write elsewhere) and run again"),
    (_full_disk_oserror, "No space left on device: 'g/.tmp-v000002-1-1/vectors.npy': the disk is full"),
    (_memory_error, "out of memory (Unable to allocate"),
])
def test_refusals_are_one_line_and_exit_2(monkeypatch, capsys, make, expected) -> None:
    error = make()
    import marginface.models.load as model

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(model, "load_model", refuse)
    assert main(["info", "m.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marginface info: ") and expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 2  # the message and the --debug hint


def test_programming_errors_still_raise(monkeypatch) -> None:
    import marginface.models.load as model

    def bug(*args, **kwargs):
        raise TypeError("a bug, not a refusal")

    monkeypatch.setattr(model, "load_model", bug)
    with pytest.raises(TypeError):
        main(["info", "m.safetensors"])


def test_unsafe_bin_through_prepare_degrade_exits_2(tmp_path, capsys) -> None:
    (tmp_path / "evil.bin").write_bytes(b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00idq\x00\x85R.")
    assert main(["prepare", "degrade", "--bin", str(tmp_path / "evil.bin"), "--out", str(tmp_path / "o.bin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marginface prepare degrade: refusing to unpickle posix.system") and "Traceback" not in err


def test_model_params_mistake_is_a_config_error(tmp_path, capsys) -> None:
    args = ["train", "model.backbone=tiny28", "model.embedding_size=8", "data.synthetic_identities=4",
            "data.synthetic_images_per_identity=1", "batch_size=4", "steps=1", "device=cpu",
            f"output_dir={tmp_path}"]
    assert main([*args, "model.params={bogus: 1}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marginface train: config field model.params {'bogus': 1}: backbone 'tiny28' refuses")
    assert main([*args, "model.params={dropout: 0.1}"]) == 2
    assert "multiple values for keyword argument 'dropout'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, line", [
    (["verify", "a.jpg", "b.jpg", "--modle", "m"], "marginface verify: error: unrecognized argument --modle; "
                                                   "did you mean --model?"),
    (["info", "m.onnx", "--jsn"], "marginface info: error: unrecognized argument --jsn; did you mean --json?"),
    (["verify", "a.jpg", "b.jpg", "--model", "m", "--mod", "x"], "marginface verify: error: unrecognized argument "
                                                                 "--mod; did you mean --model?"),  # no abbreviations
    (["losses", "--zzz"], "marginface losses: error: unrecognized argument --zzz"),
])
def test_an_unknown_option_is_named_with_the_closest_known_one(argv, line, capsys) -> None:
    """``--modle`` used to read "the following arguments are required: --model", hiding the typo."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == line


def test_help_has_no_slips() -> None:
    """Every option and positional has help; no default said twice; every example path in a help text exists."""
    import re
    from pathlib import Path

    from marginface.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    for name, parser in _all_parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        assert "(default) " not in text and "(default)," not in text, name
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            assert not (action.help and "(default:" in action.help and action.default not in (None, False)), \
                f"{name} {action.option_strings}: the help states a default that --help adds again"
        for example in re.findall(r"configs/[\w/.-]+\.yaml", text):
            assert (root / example).is_file(), f"{name}: the example {example} does not exist"
