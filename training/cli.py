"""`invoice`: the command line over each lifecycle stage (data today; model, gate and serving later)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from training.config import PROJECT_ROOT, load_params
from training.schema import REQUIRED_FIELDS

app = typer.Typer(
    help="Invoice extraction platform: data, model, gate and serving stages.", no_args_is_help=True
)
data_app = typer.Typer(help="Labeled data: generate, import, validate, version.", no_args_is_help=True)
model_app = typer.Typer(help="Model: train, evaluate, gate, rollback.", no_args_is_help=True)
app.add_typer(data_app, name="data")
review_app = typer.Typer(
    help="Reviewers in Label Studio: project, review queue, corrections, summary.", no_args_is_help=True
)
db_app = typer.Typer(
    help="Databases: the results schema's migrations; the production profile's PostgreSQL databases.",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")
app.add_typer(review_app, name="review")
app.add_typer(db_app, name="db")
console = Console(stderr=True)


def _print_json(payload: object) -> None:
    """Machine-readable result as the last stdout line (the DAGs parse it)."""
    print(json.dumps(payload, default=str))


@data_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="Dataset folder to (re)write.")] = Path("var/synthetic"),
    n: Annotated[
        int | None, typer.Option(help="Number of invoices (default: params.yaml data.n_invoices).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: params.yaml data.seed).")] = None,
    layouts: Annotated[str | None, typer.Option(help="Comma-separated layout families to draw from.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
) -> None:
    """Render a labeled synthetic dataset in Donut's layout (deterministic for a seed)."""
    from training.synth.generate import GeneratorConfig, generate_dataset

    params = load_params("data")
    config = GeneratorConfig(
        n=n if n is not None else params.get("n_invoices", 1000),
        seed=seed if seed is not None else params.get("seed", 0),
        layouts=tuple(layouts.split(","))
        if layouts
        else tuple(params.get("layouts") or GeneratorConfig(1).layouts),
        dpi=params.get("dpi", 120),
        degrade_share=params.get("degrade_share", 0.5),
        pdf_share=params.get("pdf_share", 0.1),
        split_shares=tuple(params.get("split_shares", (0.8, 0.1, 0.1))),
    )
    started = time.perf_counter()
    summary = generate_dataset(config, out, workers=workers)
    elapsed = time.perf_counter() - started
    console.print(
        f"[green]wrote {summary['n']} invoices to {out}[/] in {elapsed:.1f} s "
        f"({summary['n'] / elapsed:.1f} pages/s): {summary['splits']}"
    )
    _print_json({**summary, "seconds": round(elapsed, 2)})


@data_app.command("merge")
def merge(
    source: Annotated[Path, typer.Argument(help="A Donut-layout dataset to merge in.")],
    out: Annotated[Path, typer.Option(help="The labeled dataset to update.")] = Path("data"),
    replace_source: Annotated[
        str | None, typer.Option(help="Drop documents of this meta.source that SOURCE lacks.")
    ] = None,
) -> None:
    """Upsert another dataset's documents into the labeled dataset (idempotent)."""
    from training.data import merge_dataset

    counts = merge_dataset(source, out, replace_source)
    console.print(f"merged {source} into {out}: {counts}")
    _print_json(counts)


def _report_import(report, out: Path) -> None:
    for rejected in report.rejected:
        console.print(f"[yellow]rejected[/] {rejected['item']}: {rejected['reason']}")
    if report.rejected:
        rejected_path = out / "rejected.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        with rejected_path.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in report.rejected)
        console.print(f"rejections appended to {rejected_path}")
    _print_json(report.as_dict())


@data_app.command("import-labels")
def import_labels(
    source: Annotated[Path, typer.Argument(help="Folder with labels.jsonl and images/.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to add the documents to.")] = Path("data"),
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "test",
) -> None:
    """Import a `labels.jsonl` + `images/` folder (canonical `fields` per record) into Donut's layout."""
    from training.data import import_labels_folder

    _report_import(import_labels_folder(source, out, split), out)


@data_app.command("import-label-studio")
def import_label_studio_cmd(
    export: Annotated[Path, typer.Argument(help="Label Studio JSON export (list of tasks).")],
    images_root: Annotated[Path, typer.Option(help="Folder that task image paths are relative to.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to add the documents to.")] = Path("data"),
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "train",
) -> None:
    """Import reviewers' corrections from a Label Studio export; malformed tasks are set aside with a reason."""
    from training.data import import_label_studio

    required = load_params("validate").get("required_fields") or REQUIRED_FIELDS
    _report_import(import_label_studio(export, images_root, out, split, required=required), out)


@data_app.command("validate")
def validate(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder in Donut's layout.")] = Path("data"),
    report_dir: Annotated[Path, typer.Option(help="Where validation.json and validation.html go.")] = Path(
        "var/reports/validation"
    ),
) -> None:
    """Run the Great Expectations suite; exits 1 and names each failing file and rule."""
    from training.validate import Rules, validate_dataset, write_report

    report = validate_dataset(dataset, Rules.from_params(load_params("validate")))
    json_path, html_path = write_report(report, dataset, report_dir)
    # One plain line per failure, never wrapped, so that logs can be grepped for a file or a rule.
    for failure in report.failures[:50]:
        print(f"FAIL {failure.rule} {failure.file}: {failure.detail}", file=sys.stderr)
    if report.failures:
        more = len(report.failures) - 50
        console.print(
            f"[red]FAILED[/]: {len(report.failures)} problem(s){f' ({more} more in the report)' if more > 0 else ''}"
        )
    else:
        console.print(f"[green]PASSED[/]: {report.documents} documents, {len(report.rules)} rules")
    console.print(f"report: {html_path} and {json_path}")
    raise typer.Exit(0 if report.success else 1)


@data_app.command("version")
def version() -> None:
    """Print the labeled dataset's DVC version (the hash training runs record)."""
    from training.versioning import data_version

    _print_json(data_version())


def _image_size(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    height, _, width = value.lower().partition("x")
    return int(height), int(width)


def _base_path(base: str | None) -> str | None:
    """`none` trains the preset from scratch; a relative path not found here is the code's own (training/base)."""
    if not base or base.lower() == "none":
        return None
    shipped = Path(__file__).resolve().parents[1] / base
    return str(shipped) if not Path(base).exists() and shipped.exists() else base


@model_app.command("train")
def train_cmd(
    preset: Annotated[str | None, typer.Option(help="tiny (CPU) or gpu; ignored with a base.")] = None,
    base: Annotated[
        str | None,
        typer.Option(
            help="Pretrained Donut to fine-tune: local path or hub id (default params.yaml train.base, the "
            "shipped base reader); `none` trains the preset from scratch."
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Dataset folder in Donut's layout.")] = None,
    output: Annotated[
        str | None, typer.Option(help="Run folder: checkpoints, best model, artifacts.")
    ] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimiser steps.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop training after this many minutes.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Batches per optimiser step.")] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    image_size: Annotated[str | None, typer.Option(help="HEIGHTxWIDTH, e.g. 960x720.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    register: Annotated[
        bool, typer.Option(help="Register the model as invoice-extractor@challenger.")
    ] = True,
) -> None:
    """Fine-tune Donut with every step tracked in MLflow; registers the result as the challenger."""
    from dataclasses import fields

    from training.tracking import train_and_log, use_tracking
    from training.train import TrainConfig

    defaults = load_params("train")
    settings = {f.name: defaults[f.name] for f in fields(TrainConfig) if f.name in defaults}
    cli = {
        "preset": preset,
        "base": base,
        "data": data,
        "output": output,
        "epochs": epochs,
        "max_steps": max_steps,
        "max_minutes": max_minutes,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "learning_rate": learning_rate,
        "image_size": _image_size(image_size),
        "seed": seed,
    }
    settings.update({k: v for k, v in cli.items() if v is not None})
    if isinstance(settings.get("image_size"), list):
        settings["image_size"] = tuple(settings["image_size"])
    settings["base"] = _base_path(settings.get("base"))
    config = TrainConfig(**settings)
    console.print(f"tracking to {use_tracking()}; run folder {config.output}")
    result = train_and_log(config, register=register)
    console.print(
        f"[green]run {result['run_id']}[/]: best mean field accuracy {result['best_mean_field_accuracy']:.3f} "
        f"after {result['steps']} steps; model {result.get('registered_version', 'not registered')}"
    )
    _print_json({k: v for k, v in result.items() if k != "scores"})


@model_app.command("pretrain")
def pretrain_cmd(
    smoke: Annotated[
        bool, typer.Option(help="A few steps on a few pages, exported under the run folder.")
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimiser steps in all (the schedule's length).")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop after this many minutes (resumable).")
    ] = None,
    export_to: Annotated[str | None, typer.Option(help="Where the base checkpoint and card go.")] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Continue from this base reader (e.g. training/base) with field extraction and band reading "
            "mixed, instead of starting a fresh model: CPU sessions add up."
        ),
    ] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    tracking: Annotated[
        bool,
        typer.Option(
            help="Track in MLflow. --no-tracking (a machine without MLflow, e.g. a bare GPU machine) writes the "
            "metrics into the export folder for --record."
        ),
    ] = True,
    fit_batch: Annotated[
        bool, typer.Option(help="On a GPU, grow the batches to the largest that fits its memory.")
    ] = False,
    record: Annotated[
        Path | None,
        typer.Option(
            help="Log the --no-tracking run exported in this folder as an MLflow run, and export it to "
            "--export-to with its card."
        ),
    ] = None,
) -> None:
    """Reproduce the base reader: synthetic pages, tokenizer, reading curriculum, held-out evaluation, export."""
    from dataclasses import replace

    from training.config import from_section
    from training.pretrain import PretrainConfig, pretrain, record_run

    config = from_section(PretrainConfig, load_params("pretrain"))
    if record is not None:
        result = record_run(record, Path(export_to or config.export_to))
        console.print(
            f"[green]recorded[/] MLflow run {result['run_id']}; base reader in {result['export_to']}"
        )
        return
    config = config.smoke() if smoke else config
    overrides = {
        "max_steps": max_steps,
        "max_minutes": max_minutes,
        "export_to": export_to,
        "learning_rate": learning_rate,
        **({"init": init, "crop_steps": 0, "warmup_steps": 20} if init else {}),  # its band stage is done
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    console.print(f"pretraining into {config.output}, exporting to {config.export_to}")
    result = pretrain(
        config, "invoice model pretrain " + " ".join(sys.argv[3:]), tracked=tracking, fit_batch=fit_batch
    )
    held_out = {k: v["accuracy"] for k, v in result["holdout_scores"]["per_field"].items()}
    console.print(
        f"[green]base reader[/] {result['export_to']} ({result['size_mb']} MB); held-out family: {held_out}"
    )
    _print_json({k: v for k, v in result.items() if not k.endswith("_scores")})


@model_app.command("import-donut")
def import_donut_cmd(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="donut-python checkpoint folder (pytorch_model.bin, config.json, tokenizer)."),
    ],
    out: Annotated[Path, typer.Option(help="Where to write it in transformers' format (usable as --base).")],
) -> None:
    """Convert a donut-python checkpoint (timm Swin + MBart) into transformers' Donut format."""
    from training.model import describe, import_donut_python, save_model

    model, processor = import_donut_python(checkpoint)
    save_model(model, processor, out)
    console.print(
        f"[green]converted[/] {checkpoint} -> {out}; fine-tune it with `invoice model train --base {out}`"
    )
    _print_json({"out": str(out), **describe(model)})


def _load_for_evaluation(model: str | None):
    """A transformers-format folder, a `models:/` URI, or by default the champion (else the challenger)."""
    if model and not model.startswith(("models:/", "runs:/")):
        from training.model import load_pretrained

        return (*load_pretrained(model), model)
    import mlflow
    from training.tracking import MODEL_NAME, use_tracking

    use_tracking()
    if model is None:
        client = mlflow.MlflowClient()
        aliases = (
            client.get_registered_model(MODEL_NAME).aliases
            if client.search_registered_models(f"name='{MODEL_NAME}'")
            else {}
        )
        alias = next((a for a in ("champion", "challenger") if a in aliases), None)
        if alias is None:
            raise typer.BadParameter(
                f"no champion or challenger registered for {MODEL_NAME}: train one first (make train)"
            )
        model = f"models:/{MODEL_NAME}@{alias}"
    extractor = mlflow.pyfunc.load_model(model).unwrap_python_model()
    return extractor.model, extractor.processor, model


@model_app.command("evaluate")
def evaluate_cmd(
    dataset: Annotated[Path, typer.Argument(help="A Donut split folder or a labels.jsonl + images/ folder.")],
    model: Annotated[
        str | None, typer.Option(help="models:/invoice-extractor@alias, runs:/..., or a model folder.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Score only the first N documents.")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
) -> None:
    """Score a model on a labeled folder; the last line is one JSON object with the figures."""
    from training.evaluate import load_examples, score_by_slice
    from training.train import evaluate_model

    examples = load_examples(dataset)[:limit]
    loaded_model, processor, source = _load_for_evaluation(model)
    console.print(f"evaluating {source} on {len(examples)} documents of {dataset}")
    scores, predictions = evaluate_model(loaded_model, processor, examples, batch_size=batch_size)
    for name, slice_scores in score_by_slice([p.fields for p in predictions], examples).items():
        accuracy = {f: v["accuracy"] for f, v in slice_scores["per_field"].items()}
        console.print(f"slice {name}: n={slice_scores['n']} f1={slice_scores['f1']} {accuracy}")
    _print_json({key: scores[key] for key in ("n", "per_field", "f1", "ted_accuracy", "docs_per_s")})


@model_app.command("gate")
def gate_cmd(
    candidate: Annotated[
        str, typer.Option(help="Version to judge: an alias, a version number or models:/name@alias.")
    ] = "challenger",
    current: Annotated[
        Path | None, typer.Option(help="Recent production pages (images, PDFs) for the drift check.")
    ] = None,
    record: Annotated[
        bool, typer.Option(help="Log the evidence, tag the version and move the aliases.")
    ] = True,
    accuracy_floor: Annotated[
        float | None,
        typer.Option(help="Replace every per-field accuracy floor for this decision (recorded with it)."),
    ] = None,
) -> None:
    """Judge a candidate against the champion (params.yaml gate:); exit 1 when it is refused."""
    from dataclasses import replace

    from rich.markup import escape
    from rich.table import Table

    from training import gate

    config = gate.GateConfig.from_params(load_params("gate"))
    if accuracy_floor is not None:
        config = replace(config, min_field_accuracy=dict.fromkeys(config.min_field_accuracy, accuracy_floor))
    decision = gate.evaluate(candidate, current, config)
    table = Table(
        title=f"gate: version {decision.candidate.version} vs champion "
        f"{decision.champion.version if decision.champion else '(none)'}"
    )
    for column in ("rule", "figure", "threshold", "result"):
        table.add_column(column, no_wrap=True)
    table.add_column("detail")
    for check in decision.checks:
        table.add_row(
            escape(check.rule),
            "" if check.value is None else f"{check.value:.3f}",
            "" if check.threshold is None else f"{check.threshold:.3f}",
            "[green]pass[/]" if check.passed else "[red]FAIL[/]",
            escape(check.detail),
        )
    console.print(table)
    summary = (
        gate.record(decision, PROJECT_ROOT / "var" / "gate" / f"v{decision.candidate.version}")
        if record
        else decision.as_dict()
    )
    if decision.passed:
        verdict = (
            "[green]PROMOTED to champion[/]" if record else "[green]passes[/] (not recorded, no alias moved)"
        )
    else:
        verdict = "[red]REFUSED[/]" + ("" if record else " (not recorded)")
    console.print(f"version {decision.candidate.version}: {verdict}")
    for check in decision.checks:  # one plain line per failing rule, for logs that cut tables
        if not check.passed:
            console.print(f"  {check.rule}: {check.detail}", soft_wrap=True, markup=False, highlight=False)
    _print_json(summary)
    if not decision.passed:
        raise typer.Exit(1)


@model_app.command("rollback")
def rollback_cmd(
    reason: Annotated[
        str, typer.Option(help="Why; kept as a tag on the demoted version.")
    ] = "manual rollback",
) -> None:
    """Move the champion alias back to the previous champion."""
    from training import gate

    result = gate.rollback(reason)
    console.print(
        f"champion is version {result['champion']['version']} again"
        + (f"; version {result['demoted']['version']} demoted" if result["demoted"] else "")
    )
    _print_json(result)


def _review_client():
    from training import review

    client = review.client()
    if client is None:
        console.print("[red]no Label Studio: start it with `make up` or set LABEL_STUDIO_URL[/red]")
        raise typer.Exit(1)
    return client


@review_app.command("setup")
def review_setup() -> None:
    """Create the review project (labeling interface, page storage, least-confident-first view) if missing."""
    from training.processing import ProcessingConfig

    client = _review_client()
    project = client.project(ProcessingConfig.from_params().root)
    console.print(
        f"Label Studio project {client.config.project_title!r}: {client.config.url}/projects/{project}"
    )
    _print_json({"project": project})


@review_app.command("push")
def review_push() -> None:
    """Push the review queue (review/*.json under the processing root) as tasks, least confident first."""
    from training import review
    from training.processing import ProcessingConfig

    _print_json(review.push(_review_client(), ProcessingConfig.from_params()))


@review_app.command("pull")
def review_pull() -> None:
    """Pull new or changed annotations into the feedback inbox (then `invoice_feedback` takes them)."""
    from training import review
    from training.processing import ProcessingConfig

    export = review.pull(_review_client(), ProcessingConfig.from_params())
    _print_json({"export": str(export) if export else None})


@review_app.command("bootstrap")
def review_bootstrap(
    folder: Annotated[Path, typer.Argument(help="A new customer's unlabeled invoices (PDF or images).")],
) -> None:
    """Read a folder of unlabeled invoices with the champion (the BentoML service) and queue every one for
    review, pre-filled, so reviewers label by correcting."""
    from training import results, review
    from training.processing import ProcessingConfig

    run_id = "bootstrap__" + time.strftime("%Y%m%dT%H%M%S")
    counts = review.bootstrap(
        _review_client(), ProcessingConfig.from_params(), results.connect(), folder, run_id
    )
    console.print(f"{counts['pushed']} of {counts['files']} invoices queued for review ({run_id})")
    _print_json(counts)


@review_app.command("summary")
def review_summary(
    all_versions: Annotated[
        bool, typer.Option("--all", help="Count every reviewed task, not only the current champion's.")
    ] = False,
) -> None:
    """Queue length, corrections per field and how often the model was right per field since the champion."""
    from training import review
    from training.processing import ProcessingConfig

    client = _review_client()
    champion = None if all_versions else _champion_version()
    report = review.summary(client.tasks(client.project(ProcessingConfig.from_params().root)), champion)
    console.print(review.summary_table(report))
    _print_json(report)


UrlOption = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy URL; default INVOICE_RESULTS_URL, params.yaml process.results_url, or SQLite"
    ),
]


@db_app.command("create")
def db_create(urls: Annotated[list[str], typer.Argument(help="PostgreSQL URLs of the databases")]) -> None:
    """Create each database that does not exist yet (connecting to the server's `postgres` database)."""
    from training import results

    created = []
    for url in dict.fromkeys(urls):
        new = results.create_database(url)
        created += [url] if new else []
        console.print(f"{sa_url(url)}: {'created' if new else 'exists'}")
    _print_json({"created": [sa_url(url) for url in created]})


@db_app.command("migrate")
def db_migrate(
    url: UrlOption = None,
    revision: Annotated[str, typer.Option(help="Alembic revision to reach")] = "head",
    downgrade: Annotated[bool, typer.Option(help="Go back to --revision instead of forward")] = False,
) -> None:
    """Create or upgrade the results database's schema (Alembic, training/migrations/); idempotent."""
    from training import results

    engine = results.engine_for(url)
    before = results.revision(engine)
    after = results.migrate(engine, revision, downgrade=downgrade)
    console.print(f"results database {sa_url(str(engine.url))}: {before} -> {after}")
    _print_json({"url": sa_url(str(engine.url)), "before": before, "revision": after})


def sa_url(url: str) -> str:
    """A database URL fit to print: its password masked."""
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def _champion_version() -> str | None:
    """The champion's registry version, None when none has been promoted."""
    from training import registry

    ref = registry.by_alias("champion")
    return None if ref is None else ref.version


if __name__ == "__main__":
    app()
