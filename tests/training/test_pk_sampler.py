"""The P x K sampler: every batch is P identities x K images, a pure function of (seed, step), resumable, counted."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from marginface.training.pk_sampler import PKBatchSampler, dataset_labels, pk_batch_sampler

# 10 identities with 1..10 images each, labels interleaved (not grouped) to exercise the grouping.
SIZES = list(range(1, 11))
LABELS = np.concatenate([np.full(n, label) for label, n in enumerate(SIZES)])[np.random.default_rng(0).permutation(55)]


def batches(sampler) -> list[list[tuple[int, bool]]]:
    return list(iter(sampler))


def test_every_batch_is_p_identities_times_k_images_of_them():
    sampler = PKBatchSampler(LABELS, 3, 4, seed=1, start_step=0, total_steps=20)
    for batch in batches(sampler):
        indices = [i for i, _ in batch]
        labels = LABELS[indices]
        assert len(batch) == 12
        # identity-major: positions 4i..4i+3 are one identity, and the three identities differ
        blocks = labels.reshape(3, 4)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0])) == 3
        for block_indices in np.reshape(indices, (3, 4)):
            n = SIZES[LABELS[block_indices[0]]]
            counts = Counter(block_indices.tolist())
            if n >= 4:  # without replacement
                assert len(counts) == 4
            else:  # all n images, each floor(K/n) or ceil(K/n) times
                assert len(counts) == n and set(counts.values()) <= {4 // n, -(-4 // n)}


def test_identity_epochs_visit_every_identity_once():
    sampler = PKBatchSampler(LABELS, 3, 2, seed=5, start_step=0, total_steps=9)  # 10 // 3 = 3 batches per epoch
    seen = [LABELS[[i for i, _ in b]][::2] for b in batches(sampler)]
    for epoch in range(3):
        ids = np.concatenate(seen[3 * epoch:3 * epoch + 3])
        assert len(set(ids.tolist())) == 9  # 9 distinct of the 10, the 10th waits for the next shuffle
    assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:6]))


def test_deterministic_and_resume_reads_exactly_the_same_batches():
    straight = batches(PKBatchSampler(LABELS, 2, 3, seed=7, start_step=0, total_steps=25))
    again = batches(PKBatchSampler(LABELS, 2, 3, seed=7, start_step=0, total_steps=25))
    resumed = batches(PKBatchSampler(LABELS, 2, 3, seed=7, start_step=11, total_steps=25))
    assert straight == again
    assert resumed == straight[11:]
    other_seed = batches(PKBatchSampler(LABELS, 2, 3, seed=8, start_step=0, total_steps=25))
    assert other_seed != straight
    flips = [f for b in straight for _, f in b]
    assert 0.3 < np.mean(flips) < 0.7
    no_flip = batches(PKBatchSampler(LABELS, 2, 3, seed=7, start_step=0, total_steps=25, flip=False))
    assert [[i for i, _ in b] for b in no_flip] == [[i for i, _ in b] for b in straight]
    assert not any(f for b in no_flip for _, f in b)


def test_ranks_take_contiguous_whole_identities_of_the_global_batch():
    world = 2
    full = batches(PKBatchSampler(LABELS, 4, 2, seed=3, start_step=0, total_steps=6))
    parts = [batches(PKBatchSampler(LABELS, 4, 2, seed=3, start_step=0, total_steps=6, rank=r, world_size=world))
             for r in range(world)]
    for step, batch in enumerate(full):
        assert parts[0][step] + parts[1][step] == batch
        ids = [set(LABELS[[i for i, _ in p[step]]].tolist()) for p in parts]
        assert len(ids[0]) == len(ids[1]) == 2 and not ids[0] & ids[1]
    with pytest.raises(ValueError, match="divisible by the 3 processes"):
        PKBatchSampler(LABELS, 4, 2, seed=0, start_step=0, total_steps=1, world_size=3)


def test_small_identities_are_counted_and_replaced_or_skipped():
    replace = PKBatchSampler(LABELS, 2, 4, seed=0, start_step=0, total_steps=50)
    skip = PKBatchSampler(LABELS, 2, 4, seed=0, start_step=0, total_steps=50, small_identities="skip")
    expected = {"identities": 10, "identities_below_k": 3, "images_of_identities_below_k": 1 + 2 + 3,
                "single_image_identities": 1}
    for sampler in (replace, skip):
        assert {k: sampler.report[k] for k in expected} == expected
    assert replace.report["identities_used"] == 10 and skip.report["identities_used"] == 7
    used = {int(LABELS[i]) for b in batches(skip) for i, _ in b}
    assert used == set(range(3, 10))
    assert {int(LABELS[i]) for b in batches(replace) for i, _ in b} == set(range(10))
    assert "3 have < 4 images and are skipped" in skip.summary()
    with pytest.raises(ValueError, match="only 1 identities are usable"):
        PKBatchSampler(LABELS, 2, 10, seed=0, start_step=0, total_steps=1, small_identities="skip")


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="K >= 2"):
        PKBatchSampler(LABELS, 2, 1, seed=0, start_step=0, total_steps=1)
    with pytest.raises(ValueError, match="small_identities"):
        PKBatchSampler(LABELS, 2, 2, seed=0, start_step=0, total_steps=1, small_identities="drop")
    with pytest.raises(TypeError, match="labels"):
        dataset_labels(object())


def test_labels_of_folder_recordio_and_synthetic_datasets_without_decoding(tmp_path):
    from tests.data.helpers import make_folder

    from marginface.data import FolderDataset, RecordIODataset, SyntheticFaces, write_recordio

    make_folder(tmp_path / "faces", names=("bob", "alice", "carol"), per_identity=2)
    (tmp_path / "faces" / "bob" / "02.png").write_bytes((tmp_path / "faces" / "bob" / "00.png").read_bytes())
    folder = FolderDataset(tmp_path / "faces")
    expected = [label for _, label in folder.samples]
    assert dataset_labels(folder).tolist() == expected == [0, 0, 1, 1, 1, 2, 2]  # alice, bob (3), carol
    write_recordio(folder, tmp_path / "train")
    rec = RecordIODataset(tmp_path / "train")
    assert dataset_labels(rec).tolist() == [rec[i][1] for i in range(len(rec))] == sorted(expected)
    synthetic = SyntheticFaces(3, 4, seed=0)
    assert dataset_labels(synthetic).tolist() == [synthetic[i][1] for i in range(12)]


def test_headerless_recordio_labels_come_from_a_scan(tmp_path):
    from tests.data.helpers import face, write_image

    from marginface.data import RecordIODataset
    from marginface.data.recordio import IRHeader, RecordWriter, pack

    png = write_image(tmp_path / "x.png", face(0, 0))
    with RecordWriter(tmp_path / "plain") as writer:  # no header 0: every key is an image
        for key, label in enumerate([2, 0, 1, 0], start=1):
            writer.write(key, pack(IRHeader(0, float(label), key, 0), png))
    assert dataset_labels(RecordIODataset(tmp_path / "plain")).tolist() == [2, 0, 1, 0]


def test_trainer_factory_reports_counts(tmp_path, capsys):
    from marginface.training.config import load_config

    config = load_config(None, ["data.sampler=pk", "data.pk_images_per_identity=2", "batch_size=4",
                                f"output_dir={tmp_path}", "steps=3"])
    labels = SimpleNamespace(labels=[0, 0, 1, 1, 2], __len__=lambda: 5)
    sampler = pk_batch_sampler(labels, config, 1, SimpleNamespace(rank=0, world_size=1, is_main=True))
    assert len(sampler) == 2 and len(next(iter(sampler))) == 4
    assert "1 have < 2 images" in capsys.readouterr().out
    assert '"identities_below_k": 1' in (tmp_path / "pk_sampler.json").read_text()
