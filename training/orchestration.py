"""What the DAG files share, kept out of them so they stay thin: the Assets that chain the DAGs, default task
arguments from params.yaml `dags:`, and the data-lifecycle steps (validate, version) both data DAGs run.

Imported only by Airflow's environment (it needs `airflow.sdk`); nothing here imports torch.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from training.config import PROJECT_ROOT, load_params, setting

# The labeled dataset as DVC versions it, and the registry alias the service follows.
LABELED_INVOICES = Asset("labeled_invoices", extra={"dvc_file": "data.dvc"})
CHAMPION_MODEL = Asset("champion_model", extra={"model_uri": "models:/invoice-extractor@champion"})

START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# The Celery queue of tasks that need the ML environment (torch): only ML-capable workers listen to it. Every
# other task goes to Airflow's default queue. The LocalExecutor ignores queues, so both profiles run one DAG.
ML_QUEUE = "ml"
# Where a cluster runs the ML tasks instead (`INVOICE_ML_EXECUTOR=KubernetesExecutor`, one of Airflow's configured
# executors: serving/deploy/kubernetes/); unset, the default executor.
ML_EXECUTOR = os.environ.get("INVOICE_ML_EXECUTOR") or None


def dag_settings() -> dict[str, Any]:
    """params.yaml `dags:` with its defaults (read at parse time: one small YAML file)."""
    params = load_params("dags")
    return {
        "owner": params.get("owner", "ml-platform"),
        "retries": int(params.get("retries", 2)),
        "retry_delay_s": float(params.get("retry_delay_s", 60)),
        "processing_schedule": params.get("processing_schedule", "*/10 * * * *"),
        "feedback_schedule": params.get("feedback_schedule", "@hourly"),
    }


def default_args() -> dict[str, Any]:
    """Owner and retries every task gets; retries back off exponentially from `retry_delay_s`."""
    settings = dag_settings()
    return {
        "owner": settings["owner"],
        "retries": settings["retries"],
        "retry_delay": dt.timedelta(seconds=settings["retry_delay_s"]),
        "retry_exponential_backoff": True,
    }


def ml_bin() -> Path:
    """The ML environment's bin folder (`INVOICE_ML_BIN`), where `invoice` runs torch work for the DAGs."""
    return Path(os.environ.get("INVOICE_ML_BIN", PROJECT_ROOT / ".venvs" / "ml" / "bin"))


def dataset_dir() -> Path:
    return PROJECT_ROOT / setting("INVOICE_DATA", load_params("train"), "data", "data")


def validate_data() -> dict[str, Any]:
    """The Great Expectations suite over the labeled dataset; raises (failing the task) on any failure,
    with the report's location."""
    from training.validate import Rules, validate_dataset, write_report

    dataset = dataset_dir()
    report = validate_dataset(dataset, Rules.from_params(load_params("validate")), progress=False)
    _json, html_path = write_report(report, dataset, PROJECT_ROOT / "var" / "reports" / "validation")
    if not report.success:
        shown = "\n".join(f"{f.rule} {f.file}: {f.detail}" for f in report.failures[:20])
        raise ValueError(f"{len(report.failures)} validation failures (report {html_path}):\n{shown}")
    return {"documents": report.documents, "report": str(html_path)}


def version_data() -> dict[str, Any]:
    """`dvc add` + `dvc push` of the dataset; says whether the version changed (only then is the
    `labeled_invoices` Asset announced, so a training run never triggers itself)."""
    from training.versioning import DataVersionError, data_version, version_dataset

    dataset = dataset_dir()
    try:
        before = data_version(dataset.parent / f"{dataset.name}.dvc")["md5"]
    except DataVersionError:
        before = None
    try:
        version = version_dataset(dataset, push=True, cwd=dataset.parent)
        pushed = True
    except DataVersionError as error:  # no remote reachable: the version is still in the local cache
        if "push" not in str(error):
            raise
        print(f"warning: {error}")
        version, pushed = data_version(dataset.parent / f"{dataset.name}.dvc"), False
    print(
        f"data version {version['md5']} ({version['files']} files){' unchanged' if version['md5'] == before else ''}"
    )
    return {**version, "previous": before, "changed": version["md5"] != before, "pushed": pushed}


def processing_context():
    """The processing settings and the results database: the Airflow connection `invoice_results` when one is
    defined (e.g. PostgreSQL), else INVOICE_RESULTS_URL / params.yaml / the SQLite default."""
    from airflow.sdk import BaseHook

    from training import results
    from training.processing import ProcessingConfig

    try:
        url = BaseHook.get_connection("invoice_results").get_uri()
    except Exception:  # no such connection (Airflow raises its own not-found error): the configured default
        url = None
    return ProcessingConfig.from_params(), results.connect(url)
