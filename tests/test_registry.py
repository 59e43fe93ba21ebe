"""The one registry helper (marginface.registry) and the four registries built on it."""

from __future__ import annotations

import doctest

import pytest

import marginface.registry
from marginface import backbones, heads, losses
from marginface.align import detectors
from marginface.errors import UserError
from marginface.registry import Registry

# What each registry listed before it moved onto the helper, written out (not derived from the code under test).
LOSS_NAMES = ["adacos", "adaface", "am_softmax", "amlfs", "arcface", "circle", "combined", "cosface",
              "curricularface", "elasticface_arc", "elasticface_cos", "magface", "mv_softmax", "normface", "softmax",
              "sphereface", "sphereface2", "subcenter_arcface"]
BACKBONE_NAMES = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mobilefacenet", "vit_t", "vit_s",
                  "vit_b", "vit_l", "mobilenet", "densenet121", "tiny28"]
HEAD_NAMES = ["dense", "chunked", "partial_fc"]
DETECTOR_NAMES = ["dlib", "mtcnn", "mtcnn-torch"]


def test_register_directly_and_as_a_decorator_and_create() -> None:
    widgets: Registry[object] = Registry("widget")

    @widgets.register("square")
    class Square:
        def __init__(self, side: int = 1) -> None:
            self.side = side

    assert widgets.register("pair", lambda a, b=0: (a, b)) is not None
    assert widgets.create("square", side=3).side == 3
    assert widgets.create("pair", 1, b=2) == (1, 2)
    assert widgets["square"] is Square  # the decorator returns the class unchanged
    assert widgets.names() == ["square", "pair"] == list(widgets) and len(widgets) == 2
    assert "pair" in widgets and "circle" not in widgets
    assert Registry("widget", sort=True).names() == []


def test_duplicate_names_are_refused() -> None:
    widgets: Registry[object] = Registry("widget")
    widgets.register("a", dict)
    with pytest.raises(ValueError, match="a widget named 'a' is already registered"):
        widgets.register("a", list)
    with pytest.raises(ValueError, match="already registered"):
        widgets["a"] = list
    with pytest.raises(ValueError, match="already registered"):
        widgets.register("a")(list)
    assert widgets["a"] is dict  # the first registration stands
    widgets.unregister("a")
    widgets.register("a", list)
    assert widgets["a"] is list


def test_unknown_names_list_the_available_ones_and_suggest_close_matches() -> None:
    widgets: Registry[object] = Registry("widget", sort=True)
    for name in ("spanner", "hammer", "saw"):
        widgets.register(name, dict)
    with pytest.raises(UserError) as info:
        widgets.create("hamer")
    assert str(info.value) == "unknown widget 'hamer'; available: hammer, saw, spanner (did you mean 'hammer'?)"
    assert isinstance(info.value, ValueError)  # what callers have always caught
    with pytest.raises(ValueError, match=r"^unknown widget 'drill'; available: hammer, saw, spanner$"):
        widgets.factory("drill")
    with pytest.raises(KeyError, match="available: hammer, saw, spanner"):
        widgets["drill"]  # the mapping protocol keeps KeyError
    assert widgets.get("drill") is None


def test_monkeypatch_setitem_adds_a_temporary_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    widgets: Registry[object] = Registry("widget")
    with monkeypatch.context() as patch:
        patch.setitem(widgets, "temp", dict)
        assert widgets.names() == ["temp"]
    assert widgets.names() == []


def test_module_doctest() -> None:
    assert doctest.testmod(marginface.registry).failed == 0


def test_each_registry_lists_what_it_did_before() -> None:
    assert losses.available() == LOSS_NAMES == list(losses.LOSSES)
    assert backbones.available() == BACKBONE_NAMES == list(backbones.BACKBONES)
    assert list(heads.HEAD_KINDS) == HEAD_NAMES == list(heads.HEADS)
    assert detectors.available() == DETECTOR_NAMES == list(detectors.DETECTORS)


def test_each_loss_registers_the_class_defined_in_its_module() -> None:
    for name in LOSS_NAMES:
        cls = losses.LOSSES[name]
        assert isinstance(cls, type) and issubclass(cls, losses.MarginLoss), name
        assert cls.__module__.startswith("marginface.losses."), name
    assert losses.LOSSES["arcface"] is losses.ArcFaceLoss
    assert losses.register == losses.LOSSES.register  # the same bound method


def test_the_four_registries_keep_their_error_messages() -> None:
    loss = losses.create("cosface", embedding_size=4, num_classes=10)
    cases = [
        (lambda: losses.create("arcfce", embedding_size=4, num_classes=1), "unknown loss 'arcfce'; available: adacos,"),
        (lambda: losses.parameters("arcfce"), "unknown loss 'arcfce'"),
        (lambda: backbones.create("resnet50"), "unknown backbone 'resnet50'; available: iresnet18,"),
        (lambda: heads.create_head("sparse", loss), "unknown head kind 'sparse'; available: dense, chunked, partial"),
        (lambda: detectors.create_detector("retinaface"), "unknown detector 'retinaface'; available: dlib,"),
    ]
    for call, prefix in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(prefix), str(info.value)
    with pytest.raises(ValueError, match="did you mean 'arcface'"):
        losses.create("arcfce", embedding_size=4, num_classes=10)
    with pytest.raises(ValueError, match="bad parameters for loss 'arcface'"):
        losses.create("arcface", embedding_size=4, num_classes=10, margn=0.5)
    with pytest.raises(ValueError, match="a loss named 'arcface' is already registered"):
        losses.register("arcface", losses.ArcFaceLoss)


def test_a_new_loss_registered_outside_the_package_is_created_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    class ScaledCosine(losses.NormFaceLoss):
        pass

    monkeypatch.setitem(losses.LOSSES, "scaled_cosine", ScaledCosine)
    assert "scaled_cosine" in losses.available()
    assert isinstance(losses.create("scaled_cosine", embedding_size=4, num_classes=5, scale=8.0), ScaledCosine)
    assert "scale" in losses.parameters("scaled_cosine")
