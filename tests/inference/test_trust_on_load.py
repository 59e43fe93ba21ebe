"""A gallery's and a card's contents are checked on load, not trusted (issue 31 points 3 and 4)."""

import math
import sqlite3

import numpy as np
import pytest

from marginface.errors import UserError
from marginface.inference.card import InputContract, ModelCard
from marginface.inference.gallery import Gallery

D = 8


def _card(**kwargs):
    return ModelCard(backbone="mobilefacenet", embedding_size=D, weights_sha256="c" * 64, **kwargs)


def _saved(tmp_path, n=5):
    card = _card()
    gallery = Gallery.create(card)
    vectors = np.random.default_rng(0).normal(size=(n, D))
    gallery.add_many([f"id{i}" for i in range(n)], vectors / np.linalg.norm(vectors, axis=1, keepdims=True), card)
    gallery.save(tmp_path / "g")
    version = tmp_path / "g" / (tmp_path / "g" / "CURRENT").read_text()
    return card, version


def _edit_vectors(version, edit):
    vectors = np.load(version / "vectors.npy")
    edit(vectors)
    np.save(version / "vectors.npy", vectors)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda v: v.__setitem__(3, v[3] * 1000), r"row 3 \('id3'\) has norm 1000"),
    (lambda v: v.__setitem__(1, np.nan), r"row 1 \('id1'\) has norm nan"),
    (lambda v: v.__setitem__(2, 0.0), r"row 2 \('id2'\) has norm 0"),
])
def test_template_rows_must_be_finite_unit_vectors(tmp_path, edit, message):
    _, version = _saved(tmp_path)
    _edit_vectors(version, edit)
    with pytest.raises(UserError, match=message + r".*templates are unit vectors"):
        Gallery.load(tmp_path / "g")


@pytest.mark.parametrize(("sql", "message"), [
    ("UPDATE identities SET norm = 'nan' WHERE row = 1", r"row 1 \('id1'\): norm 'nan'"),
    ("UPDATE identities SET norm = -2.0 WHERE row = 1", r"row 1 \('id1'\): norm -2.0"),
    ("UPDATE identities SET images = 0 WHERE row = 4", r"row 4 \('id4'\): image count 0"),
])
def test_stored_counts_and_norms_are_checked(tmp_path, sql, message):
    _, version = _saved(tmp_path)
    db = sqlite3.connect(version / "gallery.sqlite")
    db.execute(sql)
    db.commit()
    db.close()
    with pytest.raises(UserError, match=message):
        Gallery.load(tmp_path / "g")


def test_duplicate_name_is_a_clear_load_error_not_an_integrity_error(tmp_path):
    _, version = _saved(tmp_path)
    db = sqlite3.connect(version / "gallery.sqlite")  # a table without the UNIQUE constraint, two 'id1's
    rows = db.execute("SELECT row, name, images, norm FROM identities").fetchall()
    db.execute("DROP TABLE identities")
    db.execute("CREATE TABLE identities (row INTEGER PRIMARY KEY, name TEXT, images INTEGER, norm REAL)")
    db.executemany("INSERT INTO identities VALUES (?, ?, ?, ?)", [(r, "id1" if r == 2 else n, i, m)
                                                                   for r, n, i, m in rows])
    db.commit()
    db.close()
    with pytest.raises(UserError, match=r"row 2: identity name 'id1' is empty, not text or repeated"):
        Gallery.load(tmp_path / "g")


def test_wrong_model_message_names_the_difference(tmp_path):
    card, _ = _saved(tmp_path)
    gallery = Gallery.load(tmp_path / "g")
    int8 = _card(precision="int8")
    with pytest.raises(UserError, match=r"sha256 cccccccccccccccc\.\.\. fp32 RGB but these probes come from model "
                                        r"sha256 cccccccccccccccc\.\.\. int8 RGB \(precision fp32 vs int8\)"):
        gallery.search(np.ones(D), 1, model=int8)
    other = ModelCard(backbone="mobilefacenet", embedding_size=D, weights_sha256="c" * 20 + "d" * 44)
    with pytest.raises(UserError, match=r"\(weights sha256 c{20}cccc vs c{20}dddd\)"):
        gallery.search(np.ones(D), 1, model=other)


def test_channel_order_is_part_of_the_compatibility_key(tmp_path):
    card, _ = _saved(tmp_path)
    bgr = _card(input=InputContract(channel_order="BGR"))
    assert bgr.compatibility_key != card.compatibility_key
    assert card.compatibility_key == "c" * 64 + ":fp32"  # RGB keys unchanged: old galleries still load
    with pytest.raises(UserError, match=r"channel order RGB vs BGR"):
        Gallery.load(tmp_path / "g").search(np.ones(D), 1, model=bgr)


@pytest.mark.parametrize(("thresholds", "ok"), [
    ({"default": 0.3}, True), ({"default": math.inf}, True), ({"default": -1.0}, True),
    ({"default": 0.2, "best_threshold": -math.inf}, True), ({"default": 1.00000012}, True),
    ({"default": math.nan}, False), ({"default": -2.0}, False), ({"default": 1.5}, False),
    ({"default": "0.3"}, False), ({"default": 0.3, "best_threshold": math.nan}, False),
])
def test_card_thresholds_must_be_cosines(thresholds, ok):
    if ok:
        _card(thresholds=thresholds)
        return
    with pytest.raises(ValueError, match=r"thresholds\.\w+ must be a cosine in \[-1, 1\] \(or \+-inf\)"):
        _card(thresholds=thresholds)
    text = _card().to_json().replace('"thresholds": {}', '"thresholds": ' + str(thresholds).replace("'", '"')
                                     .replace("nan", "NaN"))
    with pytest.raises(ValueError, match="the model card in m.onnx is not valid"):
        ModelCard.from_json(text, "m.onnx")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("embedding_size", 2**31, r"embedding_size must be an integer in \[1, 65536\], got 2147483648"),
    ("embedding_size", 0, "embedding_size must be an integer"),
    ("embedding_size", 1.5, "embedding_size must be an integer"),
    ("precision", "int4", "precision must be one of"),
])
def test_card_contract_fields_in_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelCard(**{"backbone": "mobilefacenet", "embedding_size": D, field: value})


@pytest.mark.parametrize("size", [60000, 0, 7, 112.0])
def test_card_input_size_in_range(size):
    with pytest.raises(ValueError, match=r"input.size must be an integer in \[8, 1024\]"):
        InputContract(size=size)
    with pytest.raises(ValueError, match=r"input.mean/std must be finite"):
        InputContract(mean=[math.nan, 0, 0])


def test_card_with_huge_embedding_size_is_refused_before_the_model_is_built(tmp_path):
    """The audit's 2**31 embedding size made load_model allocate terabytes; now the card fails to parse."""
    import torch
    from safetensors.torch import save_file

    from marginface.inference import load_model

    text = _card().to_json().replace(f'"embedding_size": {D}', f'"embedding_size": {2**31}')
    save_file({"backbone.w": torch.zeros(1)}, str(tmp_path / "m.safetensors"), metadata={"marginface.card": text})
    with pytest.raises(ValueError, match="embedding_size must be an integer in"):
        load_model(tmp_path / "m.safetensors")


def test_onnx_with_a_copied_card_and_no_graph_hash_is_its_own_model(tmp_path):
    """A card copied into a foreign ONNX graph claims the other model's weights hash; without the graph hash that
    our export writes beside it, the claim is not believed and no gallery of the other model accepts it."""
    import onnx
    from onnx import TensorProto, helper

    from marginface.inference import load_model
    from marginface.inference.model import ONNX_HASH_KEY, onnx_weights_sha256

    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, D], np.random.default_rng(0).normal(size=3 * D))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0), helper.make_node("MatMul", ["m", "w"],
                                                                                                 ["y"])],
        "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", D])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    card, _ = _saved(tmp_path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "marginface.card", card.to_json()
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    loaded = load_model(tmp_path / "foreign.onnx")
    assert loaded.card.weights_sha256 == onnx_weights_sha256(proto) != card.weights_sha256
    with pytest.raises(UserError, match="weights sha256"):
        Gallery.load(tmp_path / "g").search(np.ones(D), 1, model=loaded.card)
    entry = proto.metadata_props.add()  # with the graph's own hash (as marginface export writes) the card holds
    entry.key, entry.value = ONNX_HASH_KEY, onnx_weights_sha256(proto)
    onnx.save(proto, str(tmp_path / "exported.onnx"))
    assert load_model(tmp_path / "exported.onnx").card.compatibility_key == card.compatibility_key
