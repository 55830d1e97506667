"""The base reader: band crops and the curriculum, `make pretrain` in smoke mode, and the shipped checkpoint."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from training.evaluate import load_examples
from training.guidance import GLYPH_SLOTS
from training.model import PRESETS, build_model
from training.pretrain import largest_fitting
from training.schema import FIELDS
from training.synth.degrade import rotate_box
from training.synth.generate import GeneratorConfig, generate_dataset
from training.train import InvoicePages, TrainConfig, task_at

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_rotate_box_follows_pil_rotation():
    image = Image.new("L", (400, 300), 255)
    ImageDraw.Draw(image).rectangle([300, 40, 309, 49], fill=0)  # a 10 px square, top right
    rotated = image.rotate(2.5, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    dark = [
        (x, y) for y in range(rotated.height) for x in range(rotated.width) if rotated.getpixel((x, y)) < 128
    ]
    top, left, bottom, right = rotate_box((40, 300, 50, 310), 2.5, image.size, rotated.size)
    assert abs(min(y for _, y in dark) - top) <= 1 and abs(min(x for x, _ in dark) - left) <= 1
    assert abs(max(y for _, y in dark) + 1 - bottom) <= 1 and abs(max(x for x, _ in dark) + 1 - right) <= 1


def test_curriculum_order():
    config = TrainConfig(crop_steps=3, reading_steps=2, crop_every=4)
    assert [task_at(config, step) for step in range(10)] == [
        *["crops"] * 3,
        *["reading"] * 2,
        "invoice",
        "invoice",
        "invoice",
        "crops",
        "invoice",
    ]


def test_bands_hold_exactly_the_lines_inside_them(tmp_path, tokenizer):
    """Scanned (rotated) pages too: every line of a band's target is a line of the page, in reading order."""
    generate_dataset(
        GeneratorConfig(n=6, seed=11, degrade_share=1.0, pdf_share=0.0), tmp_path, progress=False
    )
    examples = load_examples(tmp_path / "train")
    _, processor = build_model(PRESETS["tiny"], tokenizer)
    pages = InvoicePages(examples, processor, max_length=512)
    rng = random.Random(0)
    non_empty = 0
    for index, example in enumerate(examples):
        page_lines = [line[4] for line in example.meta["lines"]]
        assert "\n".join(page_lines) == example.meta["text"]
        for _ in range(5):
            band, inside = pages.crop(index, 320, rng)
            assert band.shape == (3, 320, 720) and band.dtype == pages.pixels(index).dtype
            assert all(
                0 <= top < bottom <= 320 and 0 <= left < right <= 720
                for top, left, bottom, right, _ in inside
            )
            lines = [line[4] for line in inside]
            if lines:
                non_empty += 1
                remaining = iter(page_lines)
                assert all(line in remaining for line in lines), (lines, page_lines)  # in reading order
    assert non_empty >= 20
    batch = pages.crop_batch(6, 320, rng, build_model(PRESETS["tiny"], tokenizer)[0].encoder.config)
    assert batch["pixel_values"].shape == (6, 3, 320, 720)
    length = batch["labels"].shape[1]
    assert batch["where"].shape == (6, length, 10 * 23) and batch["glyphs"].shape == (6, 10 * 23, GLYPH_SLOTS)
    assert (batch["glyphs"] > 0).any()  # the bands' characters are targets
    reading = processor.tokenizer.convert_tokens_to_ids("<s_reading>")
    assert (batch["decoder_input_ids"][:, 0] == reading).all()


def test_character_crops_centre_a_character_in_their_middle_cell(tmp_path, tokenizer):
    """Curriculum stage 0's crops: the character named lies in the middle 8 px cell, where the ink is."""
    generate_dataset(GeneratorConfig(n=4, seed=5, degrade_share=0.0, pdf_share=0.0), tmp_path, progress=False)
    _, processor = build_model(PRESETS["tiny"], tokenizer)
    pages = InvoicePages(load_examples(tmp_path / "train"), processor, max_length=512)
    crops, classes = pages.character_crops(300, 8, random.Random(0))
    assert crops.shape == (300, 3, 24, 24) and crops.dtype == torch.uint8
    assert (classes > 0).all() and len(set(classes.tolist())) > 20
    ink = (255 - crops.float().mean(1)).mean((0, 2))  # per row, over crops and columns
    middle, above_below = ink[8:16].mean(), ink[[*range(4), *range(20, 24)]].mean()  # the line, between lines
    assert middle > above_below + 15, ink


def test_make_pretrain_smoke_exports_a_base_that_loads(tmp_path):
    """`make pretrain ARGS=--smoke`'s command end to end: pages, tokenizer, curriculum, MLflow run, export."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["pretrain"]["output"] = str(tmp_path / "pretrain")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "INVOICE_PARAMS": str(tmp_path / "params.yaml")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run(
        ["invoice", "model", "pretrain", "--smoke"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    base = Path(result["export_to"])
    assert base == tmp_path / "pretrain" / "smoke" / "base"
    assert {"model.safetensors", "tokenizer.json", "README.md", "scores.json"} <= {
        p.name for p in base.iterdir()
    }
    assert result["steps"] == 6 and 1 < result["size_mb"] <= 40
    card = (base / "README.md").read_text()
    assert "invoice model pretrain --smoke" in card and "boxed" in card and result["run_id"] in card
    held_out = json.loads((base / "scores.json").read_text())["holdout"]
    assert f"TED accuracy {held_out['ted_accuracy']:.3f}" in card
    assert 1 <= result["kept_step"] <= 6 and f"the checkpoint kept is step {result['kept_step']}'s" in card
    assert "through a 5-layer stem of 3x3 convolutions" in card  # the tiny preset's deep stem
    assert "4 steps of the convolution stem alone naming single characters" in card  # curriculum stage 0

    assert f"model FLOP utilisation {result['throughput']['model_flops_utilisation']:.0%}" in card

    import mlflow

    run = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(result["run_id"])
    assert "holdout_accuracy_total" in run.data.metrics and run.data.params["crop_steps"] == "2"
    assert 0 <= run.data.metrics["stem_glyph_accuracy"] <= 1
    assert run.data.metrics["images_per_s"] > 0 and 0 < run.data.metrics["model_flops_utilisation"] < 1
    assert run.data.params["pretrain_holdout_layouts"] == "('boxed',)"

    from training.model import load_pretrained

    model, processor = load_pretrained(base)
    assert model.config.decoder_start_token_id == processor.tokenizer.convert_tokens_to_ids("<s_invoice>")
    assert processor.image_processor.size == {"height": 960, "width": 720}
    assert processor.tokenizer.convert_tokens_to_ids("<s_reading>") != processor.tokenizer.unk_token_id

    # a later session continues from that base: its weights and vocabulary, the card keeping the history
    continued = subprocess.run(
        [
            "invoice",
            "model",
            "pretrain",
            "--smoke",
            "--init",
            str(base),
            "--export-to",
            str(tmp_path / "next"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert continued.returncode == 0, continued.stderr[-3000:]
    card = (tmp_path / "next" / "README.md").read_text()
    assert f"continued from ({base})" in card and result["run_id"] in card.split("### Before that")[1]
    assert "naming single characters" not in card.split("### Before that")[0]  # its stem had learnt already
    assert (tmp_path / "next" / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()


def test_untracked_pretraining_is_recorded_in_mlflow_later(tmp_path):
    """A machine without MLflow (a bare GPU machine) pretrains with --no-tracking; back here, --record logs the
    run's parameters, step metrics, scores and throughput as an MLflow run and exports the base with its card."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["pretrain"]["output"] = str(tmp_path / "pretrain")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    no_mlflow = tmp_path / "no-mlflow"
    no_mlflow.mkdir()
    (no_mlflow / "mlflow.py").write_text("raise ImportError('no MLflow on this machine')\n")
    env = {**os.environ, "INVOICE_PARAMS": str(tmp_path / "params.yaml")}
    untracked = subprocess.run(
        ["invoice", "model", "pretrain", "--smoke", "--no-tracking", "--export-to", str(tmp_path / "device")],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(no_mlflow)},
        capture_output=True,
        text=True,
    )
    assert untracked.returncode == 0, untracked.stderr[-3000:]
    device = tmp_path / "device"
    logged = [json.loads(line) for line in (device / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in logged if "loss" in record]
    assert steps and max(steps) == 6 and any("stem_glyph_accuracy" in record for record in logged)
    assert "not tracked yet" in (device / "README.md").read_text()

    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorded = subprocess.run(
        ["invoice", "model", "pretrain", "--record", str(device), "--export-to", str(tmp_path / "base")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("invoice-extractor").experiment_id])
    assert run.data.params["crop_steps"] == "2" and "data_version" in run.data.params
    assert "holdout_accuracy_total" in run.data.metrics and "final_f1" in run.data.metrics
    assert run.data.metrics["model_flops_utilisation"] > 0 and "stem_glyph_accuracy" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == sorted(set(steps))
    card = (tmp_path / "base" / "README.md").read_text()
    assert f"MLflow run `{run.info.run_id}`" in card and "--no-tracking" in card
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == (
        device / "model.safetensors"
    ).read_bytes()


def test_largest_fitting_batch_doubles_while_it_fits():
    assert largest_fitting(lambda size: size <= 48, start=4, cap=256) == 32
    assert largest_fitting(lambda size: True, start=4, cap=100) == 64
    assert largest_fitting(lambda size: False, start=4, cap=256) == 4


@pytest.fixture(scope="module")
def fresh_invoices(tmp_path_factory) -> list:
    """Invoices the shipped base never saw: a seed of their own, the layout families it was trained on."""
    out = tmp_path_factory.mktemp("fresh")
    settings = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["pretrain"]
    layouts = tuple(
        name for name in GeneratorConfig(1).layouts if name not in settings.get("holdout_layouts", ())
    )
    generate_dataset(
        GeneratorConfig(n=4, seed=2026, layouts=layouts, split_shares=(0.0, 0.0, 1.0), pdf_share=0.0),
        out,
        progress=False,
    )
    return load_examples(out / "test")


def test_shipped_base_loads_and_writes_distinct_invoice_records(fresh_invoices):
    """The shipped base as its card describes it. It does not read the key fields yet (its card says so, with
    the figures): what it must do is load, stay within 40 MB and write a well-formed, page-dependent invoice
    record for every fresh page, which fine-tuning then starts from."""
    from training.model import load_pretrained
    from training.predict import predict
    from training.pretrain import MAX_BASE_MB

    base = REPO_ROOT / "training" / "base"
    assert sum(p.stat().st_size for p in base.iterdir()) / 1e6 <= MAX_BASE_MB
    scores = json.loads((base / "scores.json").read_text())
    card = (base / "README.md").read_text()
    for field, values in scores["holdout"]["per_field"].items():
        assert f"| {field} | {values['accuracy']:.3f} | {values['support']} |" in card
    model, processor = load_pretrained(base)
    images = [Image.open(example.image).convert("RGB") for example in fresh_invoices]
    predictions = predict(model, processor, images, batch_size=4)
    for prediction in predictions:
        assert len(set(prediction.fields) & set(FIELDS)) >= 3, prediction.fields
    assert len({json.dumps(p.fields, sort_keys=True) for p in predictions}) >= 2  # not one constant sequence
