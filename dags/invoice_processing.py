"""invoice_processing: new files in the inbox -> page images -> the BentoML service -> validated records.

Every ingested file ends in exactly one state of the results database: `stored` (exported for accounting),
`review` (a Label Studio task under review/, pushed to the reviewers' Label Studio project, least confident
first) or `quarantine` (with its reason). Documents are fingerprinted
(sha256), so a file delivered twice is read once. The logic lives in training/processing.py.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from training.orchestration import START_DATE, dag_settings, default_args, processing_context


def _run_id() -> str:
    return get_current_context()["run_id"]


@dag(
    dag_id="invoice_processing",
    schedule=dag_settings()["processing_schedule"],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["invoices", "production"],
    doc_md=__doc__,
)
def invoice_processing():
    @task
    def ingest() -> list[str]:
        """Take complete files out of the inbox; returns new and retryable documents (sha256)."""
        from training.processing import ingest

        config, engine = processing_context()
        return ingest(config, engine, _run_id())

    @task
    def plan(shas: list[str]) -> list[list[str]]:
        """Split the documents into batches: one mapped task each, retried and spread independently."""
        from training.processing import ProcessingConfig, batches

        return batches(shas, ProcessingConfig.from_params().docs_per_task)

    @task
    def render(shas: list[str]) -> list[str]:
        """Page images of each document; unreadable ones to quarantine."""
        from training.processing import render

        return render(*processing_context(), shas)

    @task
    def extract(shas: list[str]) -> list[str]:
        """Read the pages through the service, in concurrent requests it batches; retried with backoff."""
        from training.processing import extract

        return extract(*processing_context(), shas, _run_id())

    @task
    def route(shas: list[str]) -> dict[str, int]:
        """GX and business rules: each document to `stored` or to the review queue."""
        from training.processing import route

        return route(*processing_context(), shas, _run_id())

    @task(trigger_rule="all_done")
    def push_reviews() -> dict[str, int]:
        """The review queue to Label Studio as pre-filled tasks, least confident first; each document once."""
        from training import review
        from training.processing import ProcessingConfig

        client = review.client()
        return {"pushed": 0} if client is None else review.push(client, ProcessingConfig.from_params())

    @task(trigger_rule="all_done")
    def export() -> dict[str, str]:
        """The run's stored invoices as CSV and JSON for accounting."""
        from training.processing import export

        config, engine = processing_context()
        return export(config, engine, _run_id())

    @task(trigger_rule="all_done")
    def report(shas: list[str]) -> dict[str, int]:
        """Where every document of the run ended; fails the run if some were left retryable."""
        from training.processing import report

        return report(processing_context()[1], shas, _run_id())

    documents = ingest()
    routed = route.expand(shas=extract.expand(shas=render.expand(shas=plan(documents))))
    routed >> push_reviews()
    routed >> export() >> report(documents)


invoice_processing()
