"""The MLflow model registry: which version holds an alias, loading a version, moving aliases.

Aliases carry the lifecycle: `challenger` (newest trained), `champion` (served), `previous` (the champion
before it, the target of a rollback).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

import mlflow
from training.model import load_pretrained
from training.tracking import MODEL_NAME, use_tracking


@dataclass(frozen=True)
class ModelRef:
    """One registered model version, as the service and the gate report it."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client() -> MlflowClient:
    use_tracking()
    return MlflowClient()


def by_alias(alias: str, name: str = MODEL_NAME) -> ModelRef | None:
    """The version holding `alias`, or None when the alias (or the model) does not exist yet."""
    try:
        version = client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return ModelRef(name, str(version.version), version.run_id)


def resolve(reference: str, name: str = MODEL_NAME) -> ModelRef:
    """A version from `models:/name@alias`, `models:/name/3`, an alias or a version number."""
    if reference.startswith("models:/"):
        name, _, rest = reference[len("models:/") :].partition("@")
        if not rest:
            name, _, rest = name.partition("/")
        reference = rest
    if reference.isdigit():
        version = client().get_model_version(name, reference)
        return ModelRef(name, str(version.version), version.run_id)
    found = by_alias(reference, name)
    if found is None:
        raise LookupError(f"no version of {name} holds the alias {reference!r}")
    return found


def download(ref: ModelRef, dst: Path | None = None) -> Path:
    """The version's transformers-format model folder, downloaded from the artifact store."""
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(dst) if dst else None))
    artifacts = Model.load(root / "MLmodel").flavors["python_function"]["artifacts"]
    return root / artifacts["model_dir"]["path"]


def load(ref: ModelRef):
    """(model, processor) of a registered version, read into memory from a download that is then removed."""
    with tempfile.TemporaryDirectory(prefix="invoice-model-") as folder:
        return load_pretrained(download(ref, Path(folder)))


def set_alias(alias: str, ref: ModelRef) -> None:
    client().set_registered_model_alias(ref.name, alias, ref.version)


def delete_alias(alias: str, name: str = MODEL_NAME) -> None:
    client().delete_registered_model_alias(name, alias)


def tag(ref: ModelRef, tags: dict[str, str]) -> None:
    registry = client()
    for key, value in tags.items():
        registry.set_model_version_tag(ref.name, ref.version, key, value)
