"""What a study row records about its environment."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from marginface.training import environment


def test_describe_names_every_field_with_this_process_values() -> None:
    got = environment.describe("cpu")
    assert list(got) == environment.FIELDS
    assert (got["torch_version"], got["numpy_version"], got["python_version"]) == (
        torch.__version__, np.__version__, platform.python_version())
    assert got["device"] == f"cpu ({environment.cpu_model()})" and got["torch_threads"] == str(torch.get_num_threads())


def test_the_commit_is_the_checkout_head_and_untracked_files_do_not_make_it_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout

    assert environment.git_commit(tmp_path) == ("unknown", "")  # not a checkout (an installed wheel's case)
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    head = git("rev-parse", "HEAD").strip()
    (tmp_path / "runs.log").write_text("untracked\n")
    assert environment.git_commit(tmp_path) == (head, "no")
    (tmp_path / "a.py").write_text("x = 2\n")
    assert environment.git_commit(tmp_path) == (head, "yes")


def test_the_child_reports_the_threads_it_was_given() -> None:
    src = str(Path(environment.__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    got = environment.describe_in_child(["cpu", "cuda:1"], env)
    assert got["cpu"]["torch_threads"] == "1" and got["cpu"]["torch_version"] == torch.__version__
    assert got["cuda:1"]["device"].startswith("cuda:1")
    with pytest.raises(OSError, match="describing the environment failed"):
        environment.describe_in_child(["cpu"], {**env, "PYTHONHOME": "/nonexistent"})  # the interpreter cannot start
