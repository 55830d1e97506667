"""Data versioning with the real DVC CLI: add, push to a folder remote, clone, pull, and the project pipeline."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from training.versioning import DataVersionError, data_version, git_commit

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def git_commit_all(repo: Path, message: str) -> None:
    run("git", "add", "-A", cwd=repo)
    run("git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", message, cwd=repo)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_add_push_clone_pull_is_byte_identical(generated, tmp_path):
    origin, remote, clone = tmp_path / "origin", tmp_path / "remote", tmp_path / "clone"
    origin.mkdir()
    run("git", "init", "-q", cwd=origin)
    run("dvc", "init", "-q", cwd=origin)
    run("dvc", "remote", "add", "-d", "storage", str(remote), cwd=origin)
    run("cp", "-r", str(generated), str(origin / "data"), cwd=origin)
    run("dvc", "add", "data", cwd=origin)
    git_commit_all(origin, "data v1")
    run("dvc", "push", cwd=origin)

    run("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    assert not (clone / "data").exists()
    run("dvc", "pull", cwd=clone)
    assert digest(clone / "data") == digest(generated)
    assert data_version(clone / "data.dvc") == data_version(origin / "data.dvc")
    assert data_version(clone / "data.dvc")["md5"].endswith(".dir")


def test_data_version_without_a_dvc_file_says_what_to_do(tmp_path):
    with pytest.raises(DataVersionError, match="make data"):
        data_version(tmp_path / "data.dvc")


@pytest.mark.slow
def test_project_pipeline_on_a_fresh_clone(tmp_path):
    """Clone the project, rebuild the data with `dvc repro`, version it, push, clone again, pull: same bytes."""
    first, second, remote = tmp_path / "first", tmp_path / "second", tmp_path / "remote"
    run("git", "clone", "-q", str(REPO_ROOT), str(first), cwd=tmp_path)
    # Code under test comes from the clone; `invoice` and `dvc` from the test environment.
    env = {**os.environ, "PYTHONPATH": str(first), "INVOICE_PROJECT_ROOT": str(first)}
    params = yaml.safe_load((first / "params.yaml").read_text())
    params["data"]["n_invoices"] = 12
    (first / "params.yaml").write_text(yaml.safe_dump(params))
    run("dvc", "remote", "add", "--local", "-f", "-d", "storage", str(remote), cwd=first, env=env)

    run("dvc", "repro", "generate", cwd=first, env=env)
    run("invoice", "data", "merge", "var/synthetic", "--out", "data", "--replace-source", "synthetic", cwd=first, env=env)
    run("dvc", "add", "data", cwd=first, env=env)
    run("dvc", "repro", cwd=first, env=env)  # validate runs on the new data version
    assert run("dvc", "status", "--json", cwd=first, env=env).strip() == "{}"
    metrics = yaml.safe_load((first / "var/reports/validation/validation.json").read_text())
    assert metrics["success"] is True and metrics["documents"] == 12
    # Rebuilding from the same parameters reproduces the same bytes, so the version does not move.
    version = data_version(first / "data.dvc")
    run("dvc", "repro", "--force", "generate", cwd=first, env=env)
    run("invoice", "data", "merge", "var/synthetic", "--out", "data", "--replace-source", "synthetic", cwd=first, env=env)
    run("dvc", "add", "data", cwd=first, env=env)
    assert data_version(first / "data.dvc") == version
    run("dvc", "push", cwd=first, env=env)
    git_commit_all(first, "data: 12 synthetic invoices")

    run("git", "clone", "-q", str(first), str(second), cwd=tmp_path)
    run("dvc", "remote", "add", "--local", "-f", "-d", "storage", str(remote), cwd=second, env=env)
    run("dvc", "pull", cwd=second, env=env)
    assert digest(second / "data") == digest(first / "data")
    assert digest(second / "var/synthetic") == digest(first / "var/synthetic")
    assert run("dvc", "status", "--json", cwd=second, env=env).strip() == "{}"


def test_git_commit_of_a_tree_without_its_repository(tmp_path, monkeypatch):
    """A copy of the working tree sent to another machine names its commit through INVOICE_GIT_COMMIT."""
    monkeypatch.delenv("INVOICE_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"
    monkeypatch.setenv("INVOICE_GIT_COMMIT", "0123abcd")
    assert git_commit(tmp_path) == "0123abcd"
    assert git_commit(REPO_ROOT).startswith(run("git", "rev-parse", "HEAD", cwd=REPO_ROOT).strip())
