"""`invoice`: the command line over each lifecycle stage (data today; model, gate and serving later)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from training.config import load_params
from training.schema import REQUIRED_FIELDS

app = typer.Typer(
    help="Invoice extraction platform: data, model, gate and serving stages.", no_args_is_help=True
)
data_app = typer.Typer(help="Labeled data: generate, import, validate, version.", no_args_is_help=True)
app.add_typer(data_app, name="data")
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


if __name__ == "__main__":
    app()
