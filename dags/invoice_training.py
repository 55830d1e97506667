"""invoice_training: validated, versioned data -> a trained candidate -> the gate -> a served champion.

Runs when the `labeled_invoices` Asset changes (the feedback DAG announces new versions) or on demand with
params. Torch work runs in the ML environment through the `invoice` CLI, whose last stdout line is JSON (the
task's XCom), on the `ml` queue (under Celery only ML-capable workers take it); the gate scores candidate and
champion on the frozen sets (evaluation) and checks drift against recent production pages before it moves the
`champion` alias.
"""

from __future__ import annotations

import json
import shlex

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from training.config import PROJECT_ROOT
from training.orchestration import (
    CHAMPION_MODEL,
    LABELED_INVOICES,
    ML_EXECUTOR,
    ML_QUEUE,
    START_DATE,
    default_args,
    ml_bin,
    validate_data,
    version_data,
)

NUMBER_OR_NONE = ["null", "number"]


def _flags(**options) -> str:
    """`--max-steps 20 --preset tiny` from the options that are set."""
    return " ".join(
        f"--{name.replace('_', '-')} {shlex.quote(str(value))}"
        for name, value in options.items()
        if value is not None
    )


@dag(
    dag_id="invoice_training",
    schedule=[LABELED_INVOICES],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["invoices", "ml"],
    doc_md=__doc__,
    params={
        "preset": Param(
            "tiny", enum=["tiny", "gpu"], description="model size (params.yaml train: otherwise)"
        ),
        "base": Param(
            None,
            type=["null", "string"],
            description="pretrained Donut to fine-tune (path or hub id, e.g. training/base); empty: params.yaml train.base; "
            "`none`: the preset from scratch",
        ),
        "epochs": Param(None, type=["null", "integer"], description="passes over the training split"),
        "max_steps": Param(
            None, type=["null", "integer"], description="stop after this many optimiser steps"
        ),
        "max_minutes": Param(None, type=NUMBER_OR_NONE, description="training time budget"),
        "accuracy_floor": Param(
            None,
            type=NUMBER_OR_NONE,
            description="replaces every per-field accuracy floor of the gate for this run (recorded with the "
            "decision); leave empty to use params.yaml gate:",
        ),
    },
)
def invoice_training():
    @task
    def validate() -> dict:
        """Great Expectations over the labeled dataset; fails the run on any failing rule."""
        return validate_data()

    @task
    def version() -> dict:
        """`dvc add` + `dvc push` of the dataset: the version the model will record."""
        return version_data()

    @task(outlets=[LABELED_INVOICES])
    def announce(data_version: dict) -> str:
        """Emit `labeled_invoices` only for a new version (never for the one this run was triggered by)."""
        if not data_version["changed"]:
            raise AirflowSkipException(f"data version {data_version['md5']} unchanged")
        return data_version["md5"]

    @task.bash(cwd=str(PROJECT_ROOT), queue=ML_QUEUE, executor=ML_EXECUTOR)
    def train(params: dict | None = None) -> str:
        """`invoice model train` in the ML environment: tracked in MLflow, registered as the challenger."""
        options = {k: params[k] for k in ("preset", "base", "epochs", "max_steps", "max_minutes")}
        return f"{ml_bin()}/invoice model train {_flags(**options)}"

    @task.bash(cwd=str(PROJECT_ROOT), queue=ML_QUEUE, executor=ML_EXECUTOR)
    def gate(trained: str, params: dict | None = None) -> str:
        """Evaluate, check drift and decide: `invoice model gate`; a refusal is a decision, not an error."""
        from training.processing import ProcessingConfig

        candidate = json.loads(trained)["registered_version"]
        current = ProcessingConfig.from_params().root / "pages"
        flags = _flags(candidate=candidate, accuracy_floor=params["accuracy_floor"])
        current_flag = f"--current {shlex.quote(str(current))}" if current.is_dir() else ""
        # exit 1 = refused (the JSON line says so); anything else is a failure worth a retry
        return f"{ml_bin()}/invoice model gate {flags} {current_flag}; status=$?; [ $status -le 1 ] || exit $status"

    @task.short_circuit
    def promoted(decision: str) -> bool:
        """Stop here (skipping the reload) when the gate refused the candidate."""
        summary = json.loads(decision)
        print(f"gate: {summary['decision']}; reasons: {summary['reasons'] or 'all rules passed'}")
        return summary["decision"] == "promoted"

    @task(outlets=[CHAMPION_MODEL])
    def reload_service(decision: str) -> dict:
        """Have the BentoML service load the new champion now (it also polls the alias)."""
        import httpx

        from training.processing import ProcessingConfig

        config = ProcessingConfig.from_params()
        version = str(json.loads(decision)["candidate"]["version"])
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        answer = httpx.post(f"{config.service_url}/reload", headers=headers, timeout=600).json()
        serving = (answer.get("model") or {}).get("version")
        if serving != version:
            raise RuntimeError(f"the service serves version {serving}, not the champion {version}: {answer}")
        return answer

    data_version, trained = version(), train()
    validate() >> data_version >> trained
    announce(data_version)
    decision = gate(trained)
    promoted(decision) >> reload_service(decision)


invoice_training()
