"""`make pretrain`: the base reader every fine-tune starts from, reproduced end to end.

Synthetic pages of the training layout families (data) → a SentencePiece tokenizer over their text → a tiny
Donut trained by curriculum: bands of text lines (reading, many supervised tokens per encoder pass), then field
extraction on whole pages with band reading mixed in; both guided by where the text lies (training/guidance.py).
Scored on a layout family it never saw, then exported with a model card to the folder the presets fine-tune
from (`training/base`).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from training.evaluate import flat_scores, load_examples
from training.synth.generate import GeneratorConfig, generate_dataset
from training.synth.render import LAYOUTS
from training.train import TrainConfig, evaluate_model, run_params, runs_stem_stage, task_at, train

BASE_DIR = Path(__file__).resolve().parent / "base"  # shipped with the code
MAX_BASE_MB = 40
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "sentencepiece.bpe.model",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything the base reader depends on; logged with its MLflow run and written into its model card."""

    output: str = "var/pretrain"
    export_to: str = str(BASE_DIR)
    pages: int = 3000
    seed: int = 7
    holdout_layouts: tuple[str, ...] = ("boxed",)  # never trained on: the generalisation test
    holdout_pages: int = 100
    stem_steps: int = 3000
    crop_steps: int = 1500
    crop_every: int = 3
    max_steps: int = 6000
    max_minutes: float | None = None
    batch_size: int = 4
    crop_batch_size: int = 12
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    eval_every: int = 750
    eval_samples: int = 24
    checkpoint_every: int = 100
    vocab_size: int = 2000
    max_length: int | None = None  # decoder positions; None keeps the preset's
    # a base reader to continue from (its weights and tokenizer) instead of a fresh model
    init: str | None = None

    @property
    def layouts(self) -> tuple[str, ...]:
        return tuple(name for name in LAYOUTS if name not in self.holdout_layouts)

    def smoke(self) -> PretrainConfig:
        """A few steps on a few pages, exported beside the run: checks the whole path in CI."""
        return replace(
            self,
            output=str(Path(self.output) / "smoke"),
            export_to=str(Path(self.output) / "smoke" / "base"),
            pages=24,
            holdout_pages=4,
            stem_steps=4,
            crop_steps=2,
            crop_every=2,
            max_steps=6,
            warmup_steps=1,
            eval_every=6,
            eval_samples=2,
            checkpoint_every=3,
            vocab_size=600,
            max_length=128,  # an untrained decoder writes until the limit: keep its evaluations short
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            data=str(Path(self.output) / "data"),
            output=str(Path(self.output) / "run"),
            preset="tiny",
            base=self.init,
            max_steps=self.max_steps,
            max_minutes=self.max_minutes,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps,
            seed=self.seed,
            eval_every=self.eval_every,
            eval_samples=self.eval_samples,
            patience=10**6,  # a curriculum is not stopped early: later stages need the earlier ones
            checkpoint_every=self.checkpoint_every,
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            stem_steps=self.stem_steps,
            crop_steps=self.crop_steps,
            crop_every=self.crop_every,
            crop_batch_size=self.crop_batch_size,
        )


def _generate_once(config: GeneratorConfig, out: Path) -> Path:
    """Render `config` into `out` unless the same config already did (so a resumed pretraining reuses it)."""
    stamp = out / "generator.json"
    wanted = json.dumps(asdict(config), sort_keys=True)
    if not (stamp.exists() and stamp.read_text() == wanted):
        generate_dataset(config, out)
        stamp.write_text(wanted)
    return out


def generate_pages(config: PretrainConfig) -> tuple[Path, Path]:
    """The training pages (its layout families, train/validation) and the held-out family's pages (test)."""
    root = Path(config.output)
    pool = _generate_once(
        GeneratorConfig(
            n=config.pages, seed=config.seed, layouts=config.layouts, split_shares=(0.95, 0.05, 0.0)
        ),
        root / "data",
    )
    holdout = _generate_once(
        GeneratorConfig(
            n=config.holdout_pages,
            seed=config.seed + 1,
            layouts=config.holdout_layouts,
            split_shares=(0.0, 0.0, 1.0),
        ),
        root / "holdout",
    )
    return pool, holdout / "test"


def field_scores(model_dir: Path, folder: Path) -> dict[str, Any]:
    """Exact match per field (and docs/s) of the model in `model_dir` on the pages of `folder`."""
    from training.model import load_pretrained

    model, processor = load_pretrained(model_dir)
    scores, _ = evaluate_model(model, processor, load_examples(folder))
    return scores


def _training_step(config: TrainConfig) -> Callable[[str, int], None]:
    """A forward and backward pass of the run's model on `size` bands ("crops") or the first `size` pages (a page
    task: "invoice", "reading"): what the batch fitting and the FLOP count run."""
    from training.hardware import device
    from training.train import InvoicePages, batch_loss, prepare, reading_guide

    model, processor, examples, _ = prepare(config)
    model.to(device()).train()
    guide = reading_guide(config, model, examples)
    pages = InvoicePages(examples, processor, model.generation_config.max_length)

    def step(task: str, size: int) -> None:
        batch = (
            pages.crop_batch(size, config.crop_height, random.Random(0), model.encoder.config)
            if task == "crops"
            else pages.batch(list(range(size)), task, model.encoder.config if guide else None)
        )
        loss, _ = batch_loss(model, guide, batch, config)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def largest_fitting(fits: Callable[[int], bool], start: int, cap: int) -> int:
    """`start` doubled while the double is at most `cap` and `fits`."""
    size = start
    while size * 2 <= cap and fits(size * 2):
        size *= 2
    return size


def fit_batch_to_gpu(config: PretrainConfig, cap: int = 256, memory_share: float = 0.8) -> PretrainConfig:
    """`config` with the largest page batch (up to `cap`; bands three times as many, a band being a third of a
    page) whose training steps stay within `memory_share` of the GPU's memory, and with `max_minutes`, as many
    steps as fit in them at that batch. The tiny model leaves a GPU idle at the CPU's batch of 4; a CPU-only
    machine gets `config` back."""
    import torch

    if not torch.cuda.is_available():
        return config
    step = _training_step(config.train_config())
    budget = memory_share * torch.cuda.get_device_properties(0).total_memory

    def fits(pages: int) -> bool:
        torch.cuda.reset_peak_memory_stats()
        try:
            step("invoice", pages)
            step("crops", 3 * pages)
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()
        return torch.cuda.max_memory_allocated() < budget

    pages = largest_fitting(fits, config.batch_size, cap)
    fitted = replace(config, batch_size=pages, crop_batch_size=3 * pages)
    if config.max_minutes is None:
        return fitted
    # The cosine schedule should end when the time does: as many steps as the measured ones fit in 90% of it.
    seconds = {
        task: _step_seconds(step, task, size) for task, size in (("invoice", pages), ("crops", 3 * pages))
    }
    tasks = [task_at(fitted.train_config(), index) for index in range(config.max_steps)]
    mean = sum(seconds[task] for task in tasks) / len(tasks)
    return replace(fitted, max_steps=int(0.9 * config.max_minutes * 60 / mean))


def _step_seconds(step: Callable[[str, int], None], task: str, size: int, repeats: int = 3) -> float:
    """Seconds of one training step of `task` at batch `size` on the GPU, after a warm-up step."""
    from training.hardware import synchronize

    step(task, size)
    synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step(task, size)
    synchronize()
    return (time.perf_counter() - started) / repeats


def throughput(config: TrainConfig, steps: int, seconds: float) -> dict[str, float]:
    """Images (pages and bands) per second over `seconds` of training, the FLOP/s this achieved (each task's
    step counted once by PyTorch's FLOP counter, times its steps) and the model FLOP utilisation: that rate
    against the device's measured matrix-multiply rate in the training precision."""
    import torch

    from training.hardware import bf16_supported, counted_flops, matmul_flops

    step = _training_step(config)
    tasks = [task_at(config, index) for index in range(steps)]
    sizes = {task: config.crop_batch_size if task == "crops" else config.batch_size for task in set(tasks)}
    flops = sum(counted_flops(partial(step, task, size)) * tasks.count(task) for task, size in sizes.items())
    peak = matmul_flops(torch.bfloat16 if config.bf16 and bf16_supported() else torch.float32)
    achieved = flops / seconds
    return {
        "images_per_s": sum(sizes[task] for task in tasks) / seconds,
        "achieved_tflops": achieved / 1e12,
        "peak_matmul_tflops": peak / 1e12,
        "model_flops_utilisation": achieved / peak,
    }


def _train_untracked(config: TrainConfig, folder: Path, progress: bool) -> dict[str, Any]:
    """`train` for a machine without MLflow: its step and evaluation metrics are appended to
    `folder`/metrics.jsonl for `record_run`, and the kept model is scored on the whole validation split as
    `train_and_log` scores it."""
    from training.model import load_pretrained

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metrics.jsonl").open("a", encoding="utf-8") as metrics:

        def log(kind: str, values: dict[str, Any], step: int) -> None:
            flat = values if kind == "step" else flat_scores(values)
            metrics.write(json.dumps({"step": step, **flat}) + "\n")
            metrics.flush()

        result = train(config, log=log, progress=progress)
    model, processor = load_pretrained(result["model_dir"])
    scores, _ = evaluate_model(model, processor, load_examples(Path(config.data) / config.eval_split))
    return {**result, "run_id": None, "scores": scores}


def export_base(model_dir: Path, export_to: Path, config: PretrainConfig, summary: dict[str, Any]) -> float:
    """Copy the model's files into `export_to` with its model card and scores; returns its size in MB (at most
    40)."""
    export_to.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (model_dir / name).exists() and model_dir.resolve() != export_to.resolve():
            shutil.copy2(model_dir / name, export_to / name)
    (export_to / "README.md").write_text(model_card(config, summary), encoding="utf-8")
    (export_to / "scores.json").write_text(
        json.dumps(
            {"holdout": summary["holdout_scores"], "validation": summary["validation_scores"]}, indent=2
        )
    )
    size_mb = (
        sum(
            (export_to / name).stat().st_size
            for name in (*MODEL_FILES, "README.md", "scores.json")
            if (export_to / name).exists()
        )
        / 1e6
    )
    if size_mb > MAX_BASE_MB:
        raise ValueError(f"{export_to} is {size_mb:.1f} MB, over the {MAX_BASE_MB} MB the repository ships")
    return size_mb


def _accuracy_rows(scores: dict[str, Any]) -> str:
    per_field = scores.get("per_field", {})
    return "\n".join(
        f"| {name} | {values['accuracy']:.3f} | {values['support']} |" for name, values in per_field.items()
    )


TARGETS = {
    "invoice_number": 0.90,
    "invoice_date": 0.90,
    "total": 0.90,
    "vendor_name": 0.80,
}  # on a new family


def _closeness(scores: dict[str, Any]) -> str:
    """How close the outputs come short of exact matches: what tells two checkpoints that read nothing apart."""
    return (
        f"Donut's TED accuracy {scores.get('ted_accuracy', 0.0):.3f} (1 = every record exact), field F1 "
        f"{scores.get('f1', 0.0):.3f}, distinct records {scores.get('distinct_share', 0.0):.2f} of the pages."
    )


def _verdict(held_out: dict[str, Any]) -> str:
    """Whether the base meets the held-out family targets, in one sentence."""
    per_field = held_out.get("per_field", {})
    missed = [
        f"{name} {per_field.get(name, {}).get('accuracy', 0.0):.2f} (target {goal:.2f})"
        for name, goal in TARGETS.items()
        if per_field.get(name, {}).get("accuracy", 0.0) < goal
    ]
    if not missed:
        return "Meets the held-out family targets on " + ", ".join(TARGETS) + "."
    return (
        "**Below its targets on the held-out family: "
        + "; ".join(missed)
        + ".** It does not read these fields yet: more pretraining is needed before fine-tunes start from it."
    )


def _how_it_was_made(base: Path) -> str | None:
    """The "How it was made" lines of a base reader's card (None without a card), so that a continued
    checkpoint's card keeps its whole history."""
    card = base / "README.md"
    if not card.exists():
        return None
    section = card.read_text(encoding="utf-8").split("## How it was made", 1)[-1]
    return section.split("\n## ", 1)[0].strip("\n")


def _run_line(run_id: str | None) -> str:
    """Where the card's run is tracked, or how to track it."""
    if run_id is None:
        return "not tracked yet: `invoice model pretrain --record <this folder>` logs it as an MLflow run"
    return f"MLflow run `{run_id}` (experiment of `make up`'s server)"


def _throughput_line(figures: dict[str, float]) -> str:
    """`throughput`'s figures in a sentence."""
    return (
        f"{figures['images_per_s']:.1f} images/s (pages and bands), {figures['achieved_tflops'] * 1e3:.0f} GFLOP/s "
        f"against a measured {figures['peak_matmul_tflops'] * 1e3:.0f} GFLOP/s matrix-multiply peak: model FLOP "
        f"utilisation {figures['model_flops_utilisation']:.0%} (training time including its evaluations)"
    )


def _stem_stage(config: PretrainConfig, summary: dict[str, Any]) -> str:
    """The card's words for curriculum stage 0, where it ran: a fresh model with a convolution stem."""
    if not runs_stem_stage(config.train_config(), summary["conv_stem"]):
        return ""
    return f"{config.stem_steps} steps of the convolution stem alone naming single characters (crops), then "


def model_card(config: PretrainConfig, summary: dict[str, Any]) -> str:
    """The base checkpoint's README: how it was made and what it measured."""
    held_out, seen = summary["holdout_scores"], summary["validation_scores"]
    earlier = (
        f"\n### Before that: the checkpoint it continued from ({config.init})\n{summary['earlier']}\n"
        if summary.get("earlier")
        else ""
    )
    return f"""# Invoice Donut base reader

A tiny Donut (transformers' `VisionEncoderDecoderModel`: DonutSwin encoder, MBart decoder;
{summary["parameters"] / 1e6:.1f} M parameters, input {summary["image_size"][0]}x{summary["image_size"][1]},
patch {summary["patch_size"]}{f" through a {summary['stem_convolutions']}-layer stem of 3x3 convolutions" if summary["conv_stem"] else ""}) trained from scratch on synthetic invoices by `make pretrain`. Fine-tunes
(`invoice model train`, the `invoice_training` DAG) start from this folder with `--base training/base` or `train.base`.

## How it was made
- Command: `{summary["command"]}`
- Commit: `{summary["git_commit"]}`; {_run_line(summary["run_id"])}
- Data: {config.pages} synthetic pages, seed {config.seed}, layout families {", ".join(config.layouts)};
  held out: {", ".join(config.holdout_layouts)} ({config.holdout_pages} pages, seed {config.seed + 1})
- Curriculum: {_stem_stage(config, summary)}{config.crop_steps} steps reading bands of text lines ({config.crop_batch_size} bands of
  {summary["crop_height"]} px per step), then field extraction on whole pages ({config.batch_size} per step)
  with one step in {config.crop_every} reading bands, all guided by the text's boxes (attention and glyph
  losses); {summary["steps"]} steps in all (the checkpoint kept is step {summary["kept_step"]}'s, the best
  mean exact match on {config.eval_samples} validation pages), AdamW {config.learning_rate}, cosine schedule, {"bf16 autocast" if summary["bf16"] else "fp32 (no bf16 on this hardware)"}
- Hardware: {summary["hardware"]}; {summary["minutes"]:.0f} minutes of training
- Throughput: {_throughput_line(summary["throughput"])}
{earlier}
## Measured accuracy (exact match per field, greedy decoding)
{_verdict(held_out)}

Held-out layout family ({", ".join(config.holdout_layouts)}, never seen in training):

| field | exact match | documents |
|---|---|---|
{_accuracy_rows(held_out)}

{_closeness(held_out)}

Validation pages of the training families:

| field | exact match | documents |
|---|---|---|
{_accuracy_rows(seen)}

{_closeness(seen)}

## Use
`invoice model train --base training/base` (the default), or `training.model.load_pretrained("training/base")`.
Files: safetensors weights, the SentencePiece tokenizer with the invoice field tags, the image processor.
"""


def pretrain(
    config: PretrainConfig, command: str, progress: bool = True, tracked: bool = True, fit_batch: bool = False
) -> dict[str, Any]:
    """Data, tokenizer and curriculum, tracked in MLflow like any run; then the held-out evaluation, the
    scores logged to the same run, and the export with its model card. Resumes an interrupted run.

    `tracked=False` is for a machine without MLflow (a bare GPU machine): the run's metrics and summary go into
    the export folder, and `record_run` logs them here afterwards. `fit_batch` grows the batches to the largest
    that fits a GPU (`fit_batch_to_gpu`)."""
    from training import hardware
    from training.model import describe, load_pretrained
    from training.versioning import git_commit

    commit = git_commit()  # the code that trains, before anything else is committed meanwhile
    earlier = _how_it_was_made(Path(config.init)) if config.init else None
    _, holdout = generate_pages(config)
    config = fit_batch_to_gpu(config) if fit_batch else config
    train_config = config.train_config()
    export_to = Path(config.export_to)
    started = time.perf_counter()
    if tracked:
        from training.tracking import train_and_log

        result = train_and_log(train_config, register=False, progress=progress)
    else:
        result = _train_untracked(train_config, export_to, progress)
    minutes = (time.perf_counter() - started) / 60
    model_dir = Path(result["model_dir"])
    model, _ = load_pretrained(model_dir)
    model_config = train_config.model_config()
    architecture = describe(model)
    summary = {
        "command": command,
        "git_commit": commit,
        "run_id": result["run_id"],
        "steps": result["steps"],
        "kept_step": result["best_step"],
        "minutes": minutes,
        "throughput": throughput(train_config, result["steps"], minutes * 60),
        "parameters": architecture["parameters"],
        "image_size": model_config.image_size,
        "patch_size": model.encoder.config.patch_size,
        "conv_stem": getattr(model.encoder.config, "conv_stem", False),  # a continued base keeps its own
        "stem_convolutions": architecture["stem_convolutions"],
        "crop_height": train_config.crop_height,
        "hardware": ", ".join(f"{k} {v}" for k, v in hardware.describe().items()),
        "bf16": hardware.bf16_supported(),
        "holdout_scores": field_scores(model_dir, holdout),
        "validation_scores": result["scores"],
        "earlier": earlier,
    }
    if tracked:
        _log_pretraining(result["run_id"], config, summary)
    else:
        run = {"config": asdict(config), "params": run_params(train_config), **summary}
        export_to.mkdir(parents=True, exist_ok=True)
        (export_to / "run.json").write_text(json.dumps(run, indent=2, default=str), encoding="utf-8")
    size_mb = export_base(model_dir, export_to, config, summary)
    return {**summary, "export_to": config.export_to, "size_mb": round(size_mb, 1)}


def _log_pretraining(run_id: str, config: PretrainConfig, summary: dict[str, Any]) -> None:
    """The pretraining's own figures, added to its MLflow run: held-out scores, throughput, its config."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(flat_scores(summary["holdout_scores"], prefix="holdout_"))
        mlflow.log_metrics(summary["throughput"])
        mlflow.log_params({f"pretrain_{k}": v for k, v in asdict(config).items() if k != "output"})


def record_run(folder: Path, export_to: Path) -> dict[str, Any]:
    """Log a pretraining that ran without MLflow (`pretrain(tracked=False)`, e.g. on a GPU machine) from its
    export `folder` as an MLflow run of this project (parameters, step metrics, scores, throughput), then
    export it to `export_to` with a model card that names the run."""
    import mlflow
    from training.tracking import use_tracking

    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    config = PretrainConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in run.pop("config").items()}
    )
    params = run.pop("params")
    use_tracking()
    with mlflow.start_run(run_name=f"{params['preset']}-pretrain-{run['git_commit'][:8]}") as active:
        mlflow.log_params(params)
        mlflow.set_tags({"data_version": params["data_version"], "preset": params["preset"]})
        for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            values = json.loads(line)
            step = values.pop("step")
            mlflow.log_metrics(values, step=step)
        mlflow.log_metrics(flat_scores(run["validation_scores"], prefix="final_"))
    summary = {**run, "run_id": active.info.run_id}
    _log_pretraining(summary["run_id"], config, summary)
    size_mb = export_base(folder, export_to, config, summary)
    return {**summary, "export_to": str(export_to), "size_mb": round(size_mb, 1)}
