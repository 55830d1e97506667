"""The data version: what DVC recorded for the labeled dataset, readable by any training run."""

from __future__ import annotations

import os
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


def content_fingerprint(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: identifies an untracked dataset folder exactly."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def dataset_version(folder: Path) -> dict[str, Any]:
    """The version a training run records for its data: DVC's md5 where `<folder>.dvc` tracks the folder,
    else a content fingerprint (so that a run on an ad-hoc folder still names its exact data)."""
    folder = Path(folder).resolve()
    dvc_file = folder.parent / f"{folder.name}.dvc"
    if dvc_file.exists():
        try:
            check_workspace_matches(dvc_file)
            return {
                "data_version": data_version(dvc_file)["md5"],
                "data_version_source": "dvc",
                "data_path": str(folder),
            }
        except DataVersionError:
            pass  # edited since `dvc add`: the recorded md5 would lie, so fingerprint what is really there
    return {
        "data_version": content_fingerprint(folder),
        "data_version_source": "content",
        "data_path": str(folder),
    }


def git_commit(cwd: Path = PROJECT_ROOT) -> str:
    """HEAD's commit, with `-dirty` when tracked files have uncommitted changes. A copy of the tree without its
    repository (e.g. sent to a GPU machine) names its commit in INVOICE_GIT_COMMIT."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
        except FileNotFoundError:  # no git on this machine
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return os.environ.get("INVOICE_GIT_COMMIT", "unknown")
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
