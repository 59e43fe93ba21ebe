"""``import marginface.models`` stays light (where models/ may import is held by tests/test_layering.py)."""

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def test_import_models_loads_no_torch() -> None:
    """``marginface.models`` names its modules lazily, so a CLI that only parses arguments stays light."""
    code = "import sys, marginface.models; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert result.stdout.strip() == "False"
