"""log.csv: step,key,value rows (LF), read back as series; truncated on resume; a search's table is refused."""

from __future__ import annotations

import csv

import pytest

from marginface.runs import RunDir, read_log
from marginface.runs.log import append_log, truncate_log


def test_rows_written_are_read_back_as_series_the_last_of_a_repeated_step_winning(tmp_path):
    path = RunDir(tmp_path).log
    append_log(path, 1, {"loss": 2.5, "lr": 0.1})
    append_log(path, 2, {"loss": 1.0 / 3.0})
    append_log(path, 2, {"loss": 0.25})  # logged again after a resume
    assert path.read_bytes().startswith(b"step,key,value\n1,loss,2.5\n") and b"\r" not in path.read_bytes()
    naive: dict[str, dict[int, float]] = {}
    with open(path, newline="") as handle:
        for step, key, value in list(csv.reader(handle))[1:]:
            naive.setdefault(key, {})[int(step)] = float(value)
    assert read_log(tmp_path) == {k: sorted(v.items()) for k, v in naive.items()}
    assert read_log(tmp_path)["loss"] == [(1, 2.5), (2, 0.25)] and read_log(path) == read_log(tmp_path)


def test_truncate_keeps_the_header_and_the_steps_up_to_the_checkpoint(tmp_path):
    path = RunDir(tmp_path).log
    for step in range(1, 6):
        append_log(path, step, {"loss": float(step)})
    truncate_log(path, 3)
    assert read_log(tmp_path) == {"loss": [(1, 1.0), (2, 2.0), (3, 3.0)]}


def test_a_searchs_table_in_log_csv_is_refused_with_what_it_is(tmp_path):
    (tmp_path / "log.csv").write_text("round,row,reward,train_loss\n0,sample0,0.5,1.2\n")
    with pytest.raises(ValueError, match="not a training log .*AM-LFS search"):
        read_log(tmp_path)
