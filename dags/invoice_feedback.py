"""invoice_feedback: reviewers' corrections -> the labeled dataset and the results database -> a new data
version that triggers `invoice_training`.

Each run first pulls the reviewers' new or changed annotations from the Label Studio project into
`feedback/inbox/` under the processing root (Label Studio JSON exports can also be dropped there by hand). It
merges them into the dataset's train split (document id = the invoice's sha256, so a correction replaces the
earlier label) and makes the corrected record the document's result (`stored`, with its reviewer and when, and
in this run's accounting export); malformed tasks are listed with their reason under `feedback/rejected/`,
processed exports filed under `feedback/done/`. The dataset is then validated (Great Expectations) and
versioned (`dvc add` + `dvc push`); only a changed version emits the `labeled_invoices` Asset. An empty inbox
skips the rest of the run. The logic lives in training/feedback.py and training/review.py.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from training import orchestration
from training.orchestration import LABELED_INVOICES, dag_settings, default_args, processing_context


@dag(
    dag_id="invoice_feedback",
    schedule=dag_settings()["feedback_schedule"],
    start_date=orchestration.START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["invoices", "data", "feedback"],
    doc_md=__doc__,
)
def invoice_feedback():
    @task
    def pull_corrections() -> str | None:
        """New or changed annotations from Label Studio into the inbox (skipped when none is configured)."""
        from training import review
        from training.processing import ProcessingConfig

        client = review.client()
        export = None if client is None else review.pull(client, ProcessingConfig.from_params())
        return None if export is None else str(export)

    @task.short_circuit
    def collect_corrections() -> list[str]:
        """The exports waiting in feedback/inbox/; an empty inbox skips the rest of the run."""
        from training.feedback import collect
        from training.processing import ProcessingConfig

        exports = [str(path) for path in collect(ProcessingConfig.from_params())]
        print(f"{len(exports)} exports in the feedback inbox: {exports}")
        return exports

    @task
    def apply_corrections(exports: list[str]) -> dict:
        """Merge the exports into the dataset (train split) and the results database; file them under done/."""
        from training.feedback import apply_corrections

        config, engine = processing_context()
        run_id = get_current_context()["run_id"]
        return apply_corrections(config, engine, orchestration.dataset_dir(), exports, run_id)

    @task
    def export_corrections(applied: dict) -> dict:
        """The corrected invoices, now stored, as this run's accounting export (CSV and JSON)."""
        from training.processing import export

        if not applied["stored"]:
            print("no results record was corrected: nothing to export")
            return {"invoices": 0}
        config, engine = processing_context()
        return export(config, engine, get_current_context()["run_id"])

    @task
    def validate_data() -> dict:
        """Great Expectations over the labeled dataset; fails the run on any failing rule."""
        return orchestration.validate_data()

    @task
    def version_data() -> dict:
        """`dvc add` + `dvc push` of the dataset; says whether the version changed."""
        return orchestration.version_data()

    @task(outlets=[LABELED_INVOICES])
    def announce_data_version(version: dict) -> str:
        """Emit `labeled_invoices` (which triggers `invoice_training`) only when the version changed."""
        if not version["changed"]:
            raise AirflowSkipException(f"data version {version['md5']} unchanged: nothing to announce")
        return version["md5"]

    exports = collect_corrections()
    pull_corrections() >> exports
    applied = apply_corrections(exports)
    export_corrections(applied)
    version = version_data()
    applied >> validate_data() >> version
    announce_data_version(version)


invoice_feedback()
