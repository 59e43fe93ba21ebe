"""models/ sits below evaluation, inference, cleaning and training: it imports backbones, data and the foundation
only, and evaluation no longer reaches into inference to load a model (the cycle issue 32 named)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "marginface"
# runs (the run folder's layout) sits below models: load_model accepts a run or checkpoint folder
ALLOWED_BELOW_MODELS = {"models", "backbones", "data", "errors", "registry", "paths", "files", "runs"}


def _marginface_imports(path: Path) -> set[str]:
    """The first component under ``marginface.`` of every import in ``path`` (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "marginface" else [f"marginface.{a.name}" for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("marginface.")}
    return found


@pytest.mark.parametrize("path", sorted((SRC / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_imports_only_below_it(path: Path) -> None:
    assert _marginface_imports(path) <= ALLOWED_BELOW_MODELS, path


def test_evaluation_does_not_import_inference() -> None:
    users = [p.name for p in sorted((SRC / "evaluation").glob("*.py")) if "inference" in _marginface_imports(p)]
    assert users == []


def test_the_checker_sees_a_forbidden_import(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from marginface.training.config import config_from_dict\n")
    assert _marginface_imports(bad) == {"training"}


def test_import_models_loads_no_torch() -> None:
    """``marginface.models`` names its modules lazily, so a CLI that only parses arguments stays light."""
    import subprocess
    import sys

    code = "import sys, marginface.models; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(SRC.parent), "PATH": ""})
    assert result.stdout.strip() == "False"
