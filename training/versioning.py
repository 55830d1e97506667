"""The data version: what DVC recorded for the labeled dataset, readable by any training run."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from training.config import PROJECT_ROOT


class DataVersionError(RuntimeError):
    """The dataset is not (or not exactly) what DVC recorded."""


def dvc(*args: str, cwd: Path = PROJECT_ROOT) -> str:
    """Run the real `dvc` CLI and return its stdout; raises with its stderr on failure."""
    result = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataVersionError(
            f"dvc {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def data_version(dvc_file: Path = PROJECT_ROOT / "data.dvc") -> dict[str, Any]:
    """`{"md5", "path", "files", "bytes"}` of the dataset as recorded in its `.dvc` file.

    The md5 is DVC's directory hash: the same bytes give the same version on any machine.
    """
    if not Path(dvc_file).exists():
        raise DataVersionError(
            f"{dvc_file} does not exist: run `make data` to create and version the dataset"
        )
    out = yaml.safe_load(Path(dvc_file).read_text(encoding="utf-8"))["outs"][0]
    return {"md5": out["md5"], "path": out["path"], "files": out.get("nfiles"), "bytes": out.get("size")}


def check_workspace_matches(dvc_file: Path = PROJECT_ROOT / "data.dvc") -> None:
    """Raise if the dataset on disk differs from the recorded version (so a run never logs a wrong hash)."""
    status = dvc("status", "--json", str(Path(dvc_file).name), cwd=Path(dvc_file).parent)
    if status.strip() not in ("{}", ""):
        raise DataVersionError(
            f"dataset differs from {dvc_file}: {status.strip()} (run `dvc add` or `dvc checkout`)"
        )


def version_dataset(path: Path, push: bool = True, cwd: Path = PROJECT_ROOT) -> dict[str, Any]:
    """`dvc add` the dataset folder (and push it to the default remote); returns the new version."""
    dvc("add", str(path), cwd=cwd)
    if push:
        dvc("push", f"{Path(path).name}.dvc", cwd=cwd)
    return data_version(cwd / f"{Path(path).name}.dvc")
