"""The two environments: Airflow's never has torch, and both import the data stage."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_PYTHON = REPO_ROOT / ".venvs" / "airflow" / "bin" / "python"
ML_PYTHON = REPO_ROOT / ".venvs" / "ml" / "bin" / "python"


def python(interpreter: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(interpreter), "-c", code], capture_output=True, text=True, check=False)


def test_airflow_environment_has_airflow_and_the_data_stage_but_no_torch():
    result = python(
        AIRFLOW_PYTHON, "import airflow, training.data, training.validate; print(airflow.__version__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3.3.2"
    assert "No module named 'torch'" in python(AIRFLOW_PYTHON, "import torch").stderr


def test_ml_environment_has_the_pinned_cpu_torch_and_the_model_stack():
    result = python(
        ML_PYTHON,
        "import torch, transformers, mlflow, bentoml, evidently; print(torch.__version__, transformers.__version__, mlflow.__version__)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2.13.0+cpu", "5.25.0", "3.17.2"]


def test_keep_freed_memory_keeps_a_freed_tensor_s_pages_in_the_process():
    """`hardware.keep_freed_memory` (what `train` calls first): a freed 200 MB tensor stays resident for the next
    step's allocations, where glibc's defaults hand it back to the kernel."""
    code = (
        "import torch\n"
        "from training.hardware import keep_freed_memory\n"
        "kept = keep_freed_memory() if mode == 'keep' else False\n"
        "tensor = torch.ones(50_000_000)\n"
        "del tensor\n"
        "print(kept, int(open('/proc/self/statm').read().split()[1]) * 4096)\n"
    )
    resident = {}
    for mode in ("keep", "default"):
        result = python(ML_PYTHON, f"mode = {mode!r}\n{code}")
        assert result.returncode == 0, result.stderr
        kept, resident[mode] = result.stdout.split()
        assert kept == str(mode == "keep")
    assert int(resident["keep"]) - int(resident["default"]) > 150e6
