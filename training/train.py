"""Fine-tuning Donut on labeled invoices: one loop for CPU and GPU, seeded, resumable, early-stopped.

Checkpoints hold the model, optimiser, scheduler, RNG states and the position in the epoch, so a resumed run
takes exactly the steps the interrupted one would have taken.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from training import hardware
from training.evaluate import Example, load_examples, mean_field_accuracy, score
from training.guidance import (
    CHARACTER_CLASS,
    OTHER_CHARACTER,
    Line,
    ReadingGuide,
    attention_targets,
    character_box,
    glyph_targets,
    line_characters,
    token_boxes,
    train_stem,
    value_characters,
)
from training.hardware import autocast, device
from training.model import PRESETS, ModelConfig, build_model, encoder_grid, load_pretrained, save_model
from training.predict import predict
from training.tokenizer import TASK_TOKENS, build_tokenizer, json2token, label_corpus, load_tokenizer
from training.versioning import dataset_version, git_commit

IGNORE_INDEX = -100
STEM_CROPS_PER_STEP = 256


@dataclass
class TrainConfig:
    """Everything a run depends on; logged as MLflow parameters."""

    data: str = "data"
    output: str = "var/runs/latest"
    preset: str = "tiny"
    base: str | None = None  # a pretrained Donut (local path or hub id) to fine-tune instead of a preset
    image_size: tuple[int, int] | None = None
    max_length: int | None = None
    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = True
    eval_every: int = 100
    eval_samples: int = 32
    patience: int = 5
    checkpoint_every: int = 100
    log_every: int = 10
    max_train_samples: int | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    vocab_size: int = 2000
    # Curriculum stage 0: a fresh model's convolution stem first learns glyphs alone, on `stem_steps` steps of
    # character crops (cheap: no Swin, no decoder).
    stem_steps: int = 0
    # Then `crop_steps` of reading bands of text lines, then `reading_steps` of whole pages (Donut's
    # pretraining task), then field extraction with every `crop_every`-th step a band-reading step.
    crop_steps: int = 0
    reading_steps: int = 0
    crop_every: int = 0
    crop_height: int = 320  # a multiple of 32 x window size, so the Swin's last stage still fills a window
    crop_batch_size: int = 12
    # Band steps also train where the decoder looks and what each encoder token shows (training/guidance.py).
    attention_guidance: float = 1.0
    glyph_guidance: float = 1.0
    max_minutes: float | None = None  # stop (checkpointed, resumable) after this much training time

    def model_config(self) -> ModelConfig:
        return PRESETS[self.preset].with_overrides(image_size=self.image_size, max_length=self.max_length)


def run_params(config: TrainConfig) -> dict[str, Any]:
    """Every hyperparameter, the architecture, the exact data version, the code version and the hardware."""
    params: dict[str, Any] = asdict(config)
    if not config.base:
        params.update({f"model_{k}": v for k, v in asdict(config.model_config()).items()})
    params.update(dataset_version(Path(config.data)))
    params["git_commit"] = git_commit()
    params.update({f"hw_{k}": v for k, v in hardware.describe().items()})
    return params


def task_at(config: TrainConfig, step: int) -> str:
    """The curriculum: which task optimiser step `step` trains."""
    if step < config.crop_steps:
        return "crops"
    if step < config.crop_steps + config.reading_steps:
        return "reading"
    return "crops" if config.crop_every and step % config.crop_every == 0 else "invoice"


class InvoicePages(Dataset):
    """Pages as uint8 tensors (preprocessed once, then cached) with their tokenised targets for a task:
    `invoice` (the fields), `reading` (the page transcript, Donut's pretraining task) or, for pages whose
    metadata has line boxes, `crops`: horizontal bands of the page and the lines they hold."""

    def __init__(self, examples: list[Example], processor, max_length: int) -> None:
        self.examples, self.processor, self.max_length = examples, processor, max_length
        self.cache: dict[int, torch.Tensor] = {}
        self.placements: dict[int, tuple[float, int, int]] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def pixels(self, index: int) -> torch.Tensor:
        if index not in self.cache:
            with Image.open(self.examples[index].image) as image:
                values = self.processor.image_processor(
                    image.convert("RGB"), do_rescale=False, do_normalize=False, return_tensors="pt"
                ).pixel_values[0]
            self.cache[index] = values.round().clamp(0, 255).to(torch.uint8)
        return self.cache[index]

    def target(self, index: int, task: str) -> tuple[str, str]:
        """`(task, text)` to train page `index` on: pages without a transcript fall back to their fields."""
        example = self.examples[index]
        text = example.meta.get("text") if task == "reading" else None
        return ("reading", text) if text is not None else ("invoice", json2token(example.label))

    def sequence(self, task: str, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`(decoder_input_ids, labels)`: the input starts with the task token, the labels end with `</s>`."""
        return self.wrap(task, self.processor.tokenizer(text, add_special_tokens=False).input_ids)

    def wrap(self, task: str, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`sequence` of text already tokenised."""
        tokenizer = self.processor.tokenizer
        ids = ids[: self.max_length - 2]
        start = tokenizer.convert_tokens_to_ids(TASK_TOKENS[task])
        return torch.tensor([start, *ids]), torch.tensor([*ids, tokenizer.eos_token_id])

    @cached_property
    def lined(self) -> list[int]:
        """The pages whose metadata has line boxes, which bands and character crops are cut from."""
        return [index for index, example in enumerate(self.examples) if example.meta.get("lines")]

    def page_lines(self, index: int) -> list[Line] | None:
        """The page's text lines (top, left, bottom, right, text) in pixels of the preprocessed page; None when
        its metadata has no line boxes."""
        lines = self.examples[index].meta.get("lines")
        if not lines:
            return None
        scale, top_pad, left_pad = self.placement(index)
        return [
            (
                top * scale + top_pad,
                left * scale + left_pad,
                bottom * scale + top_pad,
                right * scale + left_pad,
                text,
            )
            for top, left, bottom, right, text in lines
        ]

    def crop(self, index: int, height: int, rng: random.Random) -> tuple[torch.Tensor, list[Line]] | None:
        """A band of `height` pixel rows of the preprocessed page starting at a random line, and the lines
        entirely inside it in band pixels; the rows below the last of them are blanked. None without line
        boxes."""
        boxes = self.page_lines(index)
        if not boxes:
            return None
        page = self.pixels(index)
        first = rng.randrange(len(boxes))
        start = max(0, min(int(boxes[first][0]) - 2, page.shape[1] - height))
        inside = [
            (top - start, left, bottom - start, right, text)
            for top, left, bottom, right, text in boxes
            if top >= start and bottom <= start + height
        ]
        band = page[:, start : start + height].clone()
        blank_from = int(max((line[2] for line in inside), default=0)) + 2
        if blank_from < height:
            band[:, blank_from:] = band[:, blank_from:].flatten(1).median(dim=1).values[:, None, None]
        return band, inside

    def character_crops(
        self, size: int, stride: int, rng: random.Random
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` crops (3, 3 * stride, 3 * stride) around single characters of random pages with line boxes, each
        character's centre at a random place in the middle `stride` cell, and their glyph classes (`train_stem`).
        Up to 32 characters per page, so a batch still sees many fonts and degradations."""
        if not self.lined:
            raise ValueError("no page has line boxes to crop characters from")
        crops, classes = [], []
        while len(crops) < size:
            index = rng.choice(self.lined)
            page, lines = self.pixels(index), self.page_lines(index) or []
            inked = [(line, at) for line in lines for at, ink in enumerate(line[4]) if not ink.isspace()]
            for line, at in rng.sample(inked, min(32, len(inked), size - len(crops))):
                top, left, bottom, right = character_box(line, at)
                corner = [
                    min(max(0, int(centre) - stride - rng.randrange(stride)), extent - 3 * stride)
                    for centre, extent in (
                        ((top + bottom) / 2, page.shape[1]),
                        ((left + right) / 2, page.shape[2]),
                    )
                ]
                crops.append(page[:, corner[0] : corner[0] + 3 * stride, corner[1] : corner[1] + 3 * stride])
                classes.append(CHARACTER_CLASS.get(line[4][at], OTHER_CHARACTER))
        return torch.stack(crops), torch.tensor(classes)

    def placement(self, index: int) -> tuple[float, int, int]:
        """How the processor placed page `index`: its scale and the padding above and left of it (it pads
        evenly). Cached: bands and guided batches ask for it on every step."""
        if index not in self.placements:
            size = self.processor.image_processor.size
            with Image.open(self.examples[index].image) as image:
                page_width, page_height = image.size
            scale = min(size["height"] / page_height, size["width"] / page_width)
            self.placements[index] = (
                scale,
                (size["height"] - round(page_height * scale)) // 2,
                (size["width"] - round(page_width * scale)) // 2,
            )
        return self.placements[index]

    def collate(
        self, pixels: list[torch.Tensor], sequences: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Normalise pixels as Donut's processor does ((x/255 - 0.5) / 0.5) and pad the sequences."""
        inputs, labels = zip(*sequences, strict=True)
        pad = self.processor.tokenizer.pad_token_id
        return {
            "pixel_values": torch.stack(pixels).float().div_(127.5).sub_(1.0),
            "decoder_input_ids": torch.nn.utils.rnn.pad_sequence(inputs, batch_first=True, padding_value=pad),
            "labels": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
        }

    def batch(self, indices: list[int], task: str, guided_for=None) -> dict[str, torch.Tensor]:
        """Pages `indices` trained on `task`; with the guidance targets for the encoder config `guided_for`
        when some of them have line boxes."""
        targets = [self.target(i, task) for i in indices]
        pixels = [self.pixels(i) for i in indices]
        lines = [self.page_lines(i) for i in indices] if guided_for is not None else []
        if not any(lines):
            return self.collate(pixels, [self.sequence(*target) for target in targets])
        characters = [
            {}
            if page_lines is None
            else line_characters(page_lines)[1]
            if target_task == "reading"
            else value_characters(text, self.examples[i].label, page_lines)
            for i, (target_task, text), page_lines in zip(indices, targets, lines, strict=True)
        ]
        return self.guided_collate(pixels, targets, characters, lines, guided_for)

    def crop_batch(
        self, size: int, height: int, rng: random.Random, encoder_config
    ) -> dict[str, torch.Tensor] | None:
        """`size` bands from random pages with line boxes, guided (see `guided_collate`); None when no page has
        line boxes."""
        if not self.lined:
            return None
        crops = [self.crop(rng.choice(self.lined), height, rng) for _ in range(size)]
        read = [line_characters(lines) for _, lines in crops]
        return self.guided_collate(
            [band for band, _ in crops],
            [("reading", text) for text, _ in read],
            [characters for _, characters in read],
            [lines for _, lines in crops],
            encoder_config,
        )

    def guided_collate(
        self,
        pixels: list[torch.Tensor],
        targets: list[tuple[str, str]],
        characters: list[dict],
        lines: list[list[Line] | None],
        encoder_config,
    ) -> dict[str, torch.Tensor]:
        """`collate` of the (task, text) `targets`, plus the guidance targets (training/guidance.py) from the
        boxes of their `characters` and of the images' `lines`: `where` the decoder should look for each label,
        the `glyphs` each encoder token shows."""
        tokenizer = self.processor.tokenizer
        placed = [
            token_boxes(tokenizer, text, boxes) for (_, text), boxes in zip(targets, characters, strict=True)
        ]
        batch = self.collate(
            pixels, [self.wrap(task, ids) for (task, _), (ids, _) in zip(targets, placed, strict=True)]
        )
        rows, cols, stride = encoder_grid(encoder_config, *pixels[0].shape[-2:])
        length = batch["labels"].shape[1]
        batch["where"] = torch.stack(
            [attention_targets(boxes, (rows, cols), stride, length) for _, boxes in placed]
        )
        batch["glyphs"] = torch.stack(
            [glyph_targets(image_lines, (rows, cols), stride) for image_lines in lines]
        )
        return batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_order(seed: int, epoch: int, size: int) -> list[int]:
    """The shuffled order of an epoch, a pure function of (seed, epoch): resuming needs no saved sampler."""
    generator = torch.Generator().manual_seed(seed * 10_000 + epoch)
    return torch.randperm(size, generator=generator).tolist()


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = -1.0
    best_step: int = 0  # the step of the model kept in best/
    evals_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _checkpoint_path(output: Path) -> Path:
    return output / "checkpoint" / "last.pt"


# What may differ between a run and its resumption: where it is kept and how long it may take.
RESUMABLE_CHANGES = ("output", "max_minutes")


def _identity(config: TrainConfig) -> dict[str, Any]:
    """The configuration a checkpoint belongs to, as stored in it."""
    settings = json.loads(json.dumps(asdict(config), default=str))
    return {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}


def save_checkpoint(
    output: Path, model, optimizer, scheduler, state: TrainState, config: TrainConfig, guide=None
) -> None:
    path = _checkpoint_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "guide": guide.state_dict() if guide is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": asdict(state),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
            "config": _identity(config),
        },
        tmp,
    )
    tmp.replace(path)  # a crash mid-save keeps the previous checkpoint


def load_checkpoint(
    output: Path, model, optimizer, scheduler, config: TrainConfig, guide=None
) -> TrainState | None:
    """Restore the checkpoint in `output` when it belongs to this configuration and model; otherwise (another
    configuration, data that built another vocabulary) None: the run starts afresh and says why."""
    path = _checkpoint_path(output)
    if not path.exists():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    before, now = saved.get("config", {}), _identity(config)
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if changed or shapes != {name: tuple(tensor.shape) for name, tensor in saved["model"].items()}:
        reason = f"configuration changed ({', '.join(changed)})" if changed else "the model's shape changed"
        print(f"not resuming {path}: {reason}; starting afresh", file=sys.stderr)
        return None
    model.load_state_dict(saved["model"])
    if guide is not None:
        guide.load_state_dict(saved["guide"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    np.random.set_state(saved["numpy_rng"])
    return TrainState(**saved["state"])


def prepare(config: TrainConfig) -> tuple[Any, Any, list[Example], list[Example]]:
    """Model, processor and the examples: a pretrained base, or a preset with a tokenizer built from the labels
    and page transcripts of the training split."""
    train_examples = load_examples(Path(config.data) / config.train_split)[: config.max_train_samples]
    eval_examples = load_examples(Path(config.data) / config.eval_split)
    if not train_examples:
        raise ValueError(f"no training examples in {Path(config.data) / config.train_split}")
    if config.base:
        model, processor = load_pretrained(config.base)
    else:
        tokenizer_dir = Path(config.output) / "tokenizer"
        # A resumed run must keep the vocabulary its checkpoint was trained with.
        tokenizer = (
            load_tokenizer(tokenizer_dir)
            if (tokenizer_dir / "tokenizer.json").exists()
            else build_tokenizer(
                [
                    *label_corpus(e.label for e in train_examples),
                    *(e.meta["text"] for e in train_examples if e.meta.get("text")),
                ],
                tokenizer_dir,
                config.vocab_size,
            )
        )
        model, processor = build_model(config.model_config(), tokenizer)
    return model, processor, train_examples, eval_examples


def evaluate_model(
    model, processor, examples: list[Example], batch_size: int = 8
) -> tuple[dict[str, Any], list]:
    """Greedy-decode `examples` and score them; returns the scores (with docs/s) and the predictions."""
    images = []
    for example in examples:
        with Image.open(example.image) as image:
            images.append(image.convert("RGB"))
    started = time.perf_counter()
    predictions = predict(model, processor, images, batch_size=batch_size)
    seconds = time.perf_counter() - started
    scores = score(
        [p.fields for p in predictions], [e.label for e in examples], [p.sequence for p in predictions]
    )
    scores["docs_per_s"] = round(len(examples) / seconds, 3) if seconds else 0.0
    return scores, predictions


Callback = Callable[[str, dict[str, Any], int], None]


def reading_guide(config: TrainConfig, model, examples: list[Example]) -> ReadingGuide | None:
    """The guidance losses' module for a reading curriculum (band steps) on pages with line boxes: its band and
    field steps are guided. A plain fine-tune is not: in a short run the extra losses compete with the fields'
    (the gate tests' 200-step model missed its floors with them). The model then computes its attention
    weights explicitly (eager), since the fused kernels do not return them: set on the whole model, as
    transformers 5.17 takes the cross-attention's implementation from the top-level config."""
    curriculum = config.crop_steps or config.crop_every
    if not (curriculum and (config.attention_guidance or config.glyph_guidance)) or not any(
        e.meta.get("lines") for e in examples
    ):
        return None
    model.set_attn_implementation("eager")
    return ReadingGuide(model.encoder.config.hidden_size).to(next(model.parameters()).device)


def runs_stem_stage(config: TrainConfig, conv_stem: bool) -> bool:
    """Whether `config` starts with curriculum stage 0: it asks for stem steps, its model is fresh (no `base`)
    and has a convolution stem."""
    return bool(config.stem_steps and config.base is None and conv_stem)


def stem_stage(config: TrainConfig, model, dataset: InvoicePages, log: Callback, progress: bool) -> None:
    """Curriculum stage 0 for a fresh model with a convolution stem: the stem learns glyphs on character crops
    (`train_stem`) before the whole model trains; logs the share it names right as `stem_glyph_accuracy`."""
    if not runs_stem_stage(config, getattr(model.encoder.config, "conv_stem", False)):
        return
    stride = model.encoder.config.patch_size
    bar = tqdm(total=config.stem_steps, desc="stem glyphs", unit="step", disable=not progress)

    def advance(step: int, named: float) -> None:
        bar.update()
        bar.set_postfix(named=f"{named:.2f}")

    named = train_stem(
        model.encoder.embeddings.patch_embeddings.projection,
        lambda rng: dataset.character_crops(STEM_CROPS_PER_STEP, stride, rng),
        config.stem_steps,
        progress=advance,
    )
    bar.close()
    log("step", {"stem_glyph_accuracy": named}, 0)


def batch_loss(
    model, guide: ReadingGuide | None, batch: dict[str, torch.Tensor], config: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A batch's training loss, the guidance losses added where the batch has their targets, and those terms."""
    target = next(model.parameters()).device
    batch = {k: v.to(target) for k, v in batch.items()}
    where, glyphs = batch.pop("where", None), batch.pop("glyphs", None)
    guided = guide is not None and where is not None
    with autocast(config.bf16):
        outputs = model(**batch, output_attentions=guided)
        if not guided:
            return outputs.loss, {}
        guidance = guide(outputs, where, glyphs, batch["labels"])
        return (
            outputs.loss
            + config.attention_guidance * guidance["attention"]
            + config.glyph_guidance * guidance["glyphs"]
        ), guidance


def train(config: TrainConfig, log: Callback | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training; `log(kind, values, step)` receives "step" and "eval" metrics as they come."""
    log = log or (lambda kind, values, step: None)
    hardware.keep_freed_memory()
    seed_everything(config.seed)
    output = Path(config.output)
    model, processor, train_examples, eval_examples = prepare(config)
    model.to(device())
    max_length = model.generation_config.max_length
    dataset = InvoicePages(train_examples, processor, max_length)
    eval_subset = eval_examples[: config.eval_samples]
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size / config.grad_accum)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    guide = reading_guide(config, model, train_examples)
    parameters = [*model.parameters(), *(guide.parameters() if guide is not None else [])]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, min(config.warmup_steps, total_steps // 10), total_steps
    )
    state = load_checkpoint(output, model, optimizer, scheduler, config, guide) or TrainState()
    if state.step == 0:
        stem_stage(config, model, dataset, log, progress)
    (output / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps(asdict(config), indent=2, default=str))

    bar = tqdm(total=total_steps, initial=state.step, desc="training", unit="step", disable=not progress)
    window_started, window_samples, stopped_early = time.perf_counter(), 0, False
    run_started = time.perf_counter()

    def out_of_time() -> bool:
        return (
            config.max_minutes is not None and (time.perf_counter() - run_started) / 60 >= config.max_minutes
        )

    while state.step < total_steps and not stopped_early and not out_of_time():
        order = epoch_order(config.seed, state.epoch, len(dataset))
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        while state.batch_in_epoch < len(batches) and state.step < total_steps and not out_of_time():
            model.train()
            task = task_at(config, state.step)
            # Bands come from random pages (seeded by the step, so a resumed run draws the same ones) and do
            # not advance the epoch over pages.
            crops = (
                dataset.crop_batch(
                    config.crop_batch_size,
                    config.crop_height,
                    random.Random(f"{config.seed}:{state.step}"),
                    model.encoder.config,
                )
                if task == "crops"
                else None
            )
            group = (
                [crops]
                if crops is not None
                else [
                    dataset.batch(
                        indices,
                        "invoice" if task == "crops" else task,
                        model.encoder.config if guide is not None else None,
                    )
                    for indices in batches[state.batch_in_epoch : state.batch_in_epoch + config.grad_accum]
                ]
            )
            loss_sum, guidance = 0.0, {}
            for batch in group:
                loss, guidance = batch_loss(model, guide, batch, config)
                (loss / len(group)).backward()
                loss_sum += loss.item() / len(group)
                window_samples += len(batch["labels"])
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_in_epoch += 0 if crops is not None else len(group)
            bar.update()
            elapsed = time.perf_counter() - window_started
            bar.set_postfix(loss=f"{loss_sum:.3f}", samples_s=f"{window_samples / elapsed:.2f}")
            state.history.append({"step": state.step, "loss": loss_sum})
            if state.step % config.log_every == 0 or state.step == total_steps:
                log(
                    "step",
                    {
                        "loss": loss_sum,
                        f"loss_{task}": loss_sum,  # the curriculum's tasks have losses of their own scale
                        "learning_rate": scheduler.get_last_lr()[0],
                        "samples_per_s": window_samples / elapsed,
                        **{f"guidance_{name}": value.item() for name, value in guidance.items()},
                    },
                    state.step,
                )
                window_started, window_samples = time.perf_counter(), 0
            if (
                eval_subset
                and state.step > config.crop_steps + config.reading_steps  # fields are trained from here on
                and (state.step % config.eval_every == 0 or state.step == total_steps)
            ):
                scores, _ = evaluate_model(model, processor, eval_subset)
                current = mean_field_accuracy(scores)
                # The model kept is the best at every field, line items too: they are often learnt last.
                selection = mean_field_accuracy(scores, tuple(scores["per_field"]))
                log(
                    "eval",
                    {**scores, "mean_field_accuracy": current, "selection_accuracy": selection},
                    state.step,
                )
                if selection > state.best_score:
                    state.best_score, state.best_step = selection, state.step
                    state.evals_without_improvement = 0
                    save_model(model, processor, output / "best")
                else:
                    state.evals_without_improvement += 1
                # Stop when patience runs out, or when every field is right: nothing left to learn here.
                stopped_early = state.evals_without_improvement >= config.patience or selection >= 1.0
                if stopped_early:
                    break
            if state.step % config.checkpoint_every == 0:
                save_checkpoint(output, model, optimizer, scheduler, state, config, guide)
        if state.batch_in_epoch >= len(batches):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    bar.close()
    save_checkpoint(output, model, optimizer, scheduler, state, config, guide)
    save_model(model, processor, output / "last")
    if not (output / "best").exists():
        state.best_step = state.step
        save_model(model, processor, output / "best")
    return {
        "steps": state.step,
        "epochs": state.epoch,
        "best_mean_field_accuracy": state.best_score,
        "best_step": state.best_step,
        "stopped_early": stopped_early,
        "model_dir": str(output / "best"),
        "final_loss": state.history[-1]["loss"] if state.history else None,
    }
