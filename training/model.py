"""transformers' own Donut: a DonutSwin encoder and an MBart decoder, built from presets or loaded.

Three ways to a model:
- `build_model(preset)`: a fresh model from a preset (`tiny` for this CPU, `gpu` for an accelerator);
- `load_pretrained(path_or_hub_id)`: any Donut saved in transformers' format (e.g. `naver-clova-ix/donut-base`
  or a local folder), with the invoice tags added to its tokenizer;
- `import_donut_python(folder)`: a donut-python checkpoint (timm Swin keys + MBart decoder) converted in memory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import (
    DonutProcessor,
    DonutSwinConfig,
    DonutSwinModel,
    MBartConfig,
    MBartForCausalLM,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)
from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil

from training.tokenizer import TASK_TOKENS, load_tokenizer


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input resolution of a Donut built from scratch."""

    image_size: tuple[int, int] = (960, 720)  # (height, width)
    patch_size: int = 8
    embed_dim: int = 64
    depths: tuple[int, ...] = (2, 2, 2)
    num_heads: tuple[int, ...] = (2, 4, 8)
    window_size: int = 10
    decoder_layers: int = 2
    d_model: int = 256
    decoder_heads: int = 4
    decoder_ffn_dim: int = 1024
    max_length: int = 1024
    # Fixed 2D sine-cosine codes added to the encoder's output tokens. Swin's tokens carry no absolute position,
    # so without them the decoder cannot tell which of two alike regions comes first (e.g. in reading order).
    grid_positions: bool = True
    # Overlapping 3x3 stride-2 convolutions in place of Swin's one patch projection. Trained from scratch, the
    # projection's encoder stalls at naming ~0.15 of the characters; with the stem it passes 0.3 (glyph probe).
    conv_stem: bool = True
    # A stride-1 3x3 convolution after each stride-2 one but the last (five layers at patch 8): after stage 0 the
    # glyph probe names 0.29 of held-out characters at 400 steps, against 0.19 with the three-layer stem.
    deep_stem: bool = True

    def with_overrides(self, **overrides: Any) -> ModelConfig:
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
        return replace(self, **known)


PRESETS: dict[str, ModelConfig] = {
    # Trains on a 2-core CPU: ~5M parameters, patch 8, 1.1 s per batch-4 step in bf16 at 960x720 (make bench).
    "tiny": ModelConfig(),
    # For an accelerator: donut-base-like widths at a page-sized resolution.
    "gpu": ModelConfig(
        image_size=(1280, 960),
        patch_size=4,
        embed_dim=128,
        depths=(2, 2, 6, 2),
        num_heads=(4, 8, 16, 32),
        decoder_layers=4,
        d_model=512,
        decoder_heads=8,
        decoder_ffn_dim=2048,
        conv_stem=False,  # a pretrained Donut's patch projection is what it would start from
        deep_stem=False,
    ),
}


def image_processor(image_size: tuple[int, int]) -> DonutImageProcessorPil:
    """Donut's resize-and-pad to (height, width), without rotating portrait pages."""
    height, width = image_size
    return DonutImageProcessorPil(
        size={"height": height, "width": width}, do_align_long_axis=False, do_thumbnail=True, do_pad=True
    )


def grid_position_codes(height: int, width: int, dim: int) -> torch.Tensor:
    """(height * width, dim) fixed codes in row-major token order: half the channels a sine-cosine code of the
    row, half of the column, at wavelengths from 2 pi to 200 pi tokens."""
    quarter = dim // 4
    frequencies = 100.0 ** (-torch.arange(quarter) / quarter)

    def code(length: int) -> torch.Tensor:
        angles = torch.arange(length)[:, None] * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows = code(height)[:, None].expand(height, width, 2 * quarter)
    columns = code(width)[None].expand(height, width, 2 * quarter)
    codes = torch.cat([rows, columns], dim=-1).reshape(height * width, 4 * quarter)
    return torch.nn.functional.pad(codes, (0, dim - 4 * quarter))


def encoder_grid(config: DonutSwinConfig, height: int, width: int) -> tuple[int, int, int]:
    """(rows, columns, stride in pixels) of the encoder's output tokens for a `height` x `width` image."""
    stride = config.patch_size * 2 ** (len(config.depths) - 1)
    return -(-height // stride), -(-width // stride), stride  # Swin pads odd grids


def _add_grid_positions(encoder: DonutSwinModel, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook of the encoder: its output tokens plus their grid position codes."""
    pixels = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
    height, width, _ = encoder_grid(encoder.config, *pixels.shape[-2:])
    tokens = output.last_hidden_state
    codes = grid_position_codes(height, width, tokens.shape[-1]).to(tokens.device, tokens.dtype)
    output.last_hidden_state = tokens + codes
    return output


def _attach_grid_positions(model: VisionEncoderDecoderModel) -> None:
    """Add the position codes to the encoder's output when its config asks for them (saved in config.json)."""
    if getattr(model.encoder.config, "grid_positions", False):
        model.encoder.register_forward_hook(_add_grid_positions, with_kwargs=True)


def conv_stem(patch_size: int, embed_dim: int, deep: bool = False) -> torch.nn.Sequential:
    """3x3 stride-2 convolutions (batch norm, GELU between) down to `patch_size`, widening to `embed_dim`, each but
    the last followed by a stride-1 one where `deep`: the patch projection's drop-in (same input, same output
    grid)."""
    steps = patch_size.bit_length() - 1
    if patch_size != 2**steps or steps < 2:
        raise ValueError(f"a convolution stem needs a patch size of 4, 8, 16...; got {patch_size}")
    widths = [embed_dim // 2 + embed_dim // 2 * index // (steps - 1) for index in range(steps)]
    plan = [(width, 2) for width in widths]  # (output channels, stride) of each convolution
    if deep:
        plan = [layer for width in widths[:-1] for layer in ((width, 2), (width, 1))] + plan[-1:]
    layers: list[torch.nn.Module] = []
    channels = 3
    for index, (width, stride) in enumerate(plan):
        layers.append(torch.nn.Conv2d(channels, width, 3, stride=stride, padding=1))
        if index < len(plan) - 1:
            layers += [torch.nn.BatchNorm2d(width), torch.nn.GELU()]
        channels = width
    return torch.nn.Sequential(*layers)


def _attach_conv_stem(model: VisionEncoderDecoderModel) -> None:
    """Swap the encoder's patch projection for `conv_stem` when its config asks for one (saved in config.json; a
    config without `deep_stem` predates it and has three layers)."""
    config = model.encoder.config
    if getattr(config, "conv_stem", False):
        model.encoder.embeddings.patch_embeddings.projection = conv_stem(
            config.patch_size, config.embed_dim, getattr(config, "deep_stem", False)
        )


def _configure_generation(model: VisionEncoderDecoderModel, tokenizer, max_length: int) -> None:
    model.config.decoder_start_token_id = tokenizer.convert_tokens_to_ids(TASK_TOKENS["invoice"])
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.max_length = max_length


def build_model(config: ModelConfig, tokenizer) -> tuple[VisionEncoderDecoderModel, DonutProcessor]:
    """A freshly initialised Donut for `config`, with its processor."""
    encoder = DonutSwinModel(
        DonutSwinConfig(
            image_size=list(config.image_size),
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depths=list(config.depths),
            num_heads=list(config.num_heads),
            window_size=config.window_size,
            grid_positions=config.grid_positions,
            conv_stem=config.conv_stem,
            deep_stem=config.deep_stem,
        )
    )
    decoder = MBartForCausalLM(
        MBartConfig(
            vocab_size=len(tokenizer),
            d_model=config.d_model,
            decoder_layers=config.decoder_layers,
            decoder_attention_heads=config.decoder_heads,
            decoder_ffn_dim=config.decoder_ffn_dim,
            max_position_embeddings=config.max_length,
            is_decoder=True,
            is_encoder_decoder=False,
            add_cross_attention=True,
            scale_embedding=True,
            add_final_layer_norm=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    _attach_conv_stem(model)
    _attach_grid_positions(model)
    _configure_generation(model, tokenizer, config.max_length)
    return model, DonutProcessor(image_processor=image_processor(config.image_size), tokenizer=tokenizer)


def save_model(model: VisionEncoderDecoderModel, processor: DonutProcessor, out_dir: Path) -> None:
    """Save in transformers' format (safetensors), loadable by `load_pretrained`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def load_pretrained(name_or_path: str | Path) -> tuple[VisionEncoderDecoderModel, DonutProcessor]:
    """Load any transformers-format Donut (local folder or hub id) and make it speak the invoice tags.

    Tags missing from its tokenizer are added and the decoder's embeddings grown to match.
    """
    source = str(name_or_path)
    tokenizer = load_tokenizer(source)
    config = VisionEncoderDecoderConfig.from_pretrained(source)
    if getattr(config.encoder, "conv_stem", False):
        model = _load_with_conv_stem(config, Path(source))
    else:
        model = VisionEncoderDecoderModel.from_pretrained(source)
    _attach_grid_positions(model)
    if model.decoder.get_input_embeddings().num_embeddings < len(tokenizer):
        model.decoder.resize_token_embeddings(len(tokenizer))
    processor_image = DonutProcessor.from_pretrained(source).image_processor
    height, width = processor_image.size["height"], processor_image.size["width"]
    max_length = model.decoder.config.max_position_embeddings
    _configure_generation(model, tokenizer, max_length)
    return model, DonutProcessor(image_processor=image_processor((height, width)), tokenizer=tokenizer)


def _load_with_conv_stem(config: VisionEncoderDecoderConfig, folder: Path) -> VisionEncoderDecoderModel:
    """A saved model whose encoder has a `conv_stem`, which `from_pretrained` would not build: the model from its
    config, the stem swapped in, then the weights."""
    model = VisionEncoderDecoderModel(config=config)
    _attach_conv_stem(model)
    missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    model.tie_weights()  # the saved file holds tied weights once
    if unexpected or any(not key.endswith("lm_head.weight") for key in missing):
        raise ValueError(f"{folder} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.eval()


# ---------------------------------------------------------------- donut-python checkpoints


def _donut_python_key(key: str) -> str | None:
    """Name of a donut-python (timm Swin + MBart) weight in transformers' Donut; None for dropped buffers."""
    if "attn_mask" in key or key.startswith("encoder.model.norm.") or key.startswith("encoder.model.head"):
        return None
    if key.startswith("decoder.model."):
        return "decoder." + key[len("decoder.model.") :]
    name = key.replace("encoder.model.", "encoder.", 1)
    name = name.replace("patch_embed.proj", "embeddings.patch_embeddings.projection")
    name = name.replace("patch_embed.norm", "embeddings.norm")
    name = name.replace("encoder.layers.", "encoder.encoder.layers.")
    replacements = {
        "attn.proj": "attention.output.dense",
        "attn.relative_position": "attention.self.relative_position",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for old, new in replacements.items():
        name = name.replace(old, new)
    return name


def convert_donut_python_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename donut-python weights and split timm's fused `qkv` into query/key/value."""
    converted = {}
    for key, tensor in state.items():
        if ".attn.qkv." in key:
            prefix = _donut_python_key(key.split(".attn.qkv.")[0])
            kind = key.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), tensor.chunk(3, dim=0), strict=True):
                converted[f"{prefix}.attention.self.{name}.{kind}"] = part
            continue
        name = _donut_python_key(key)
        if name is not None:
            converted[name] = tensor
    return converted


def _infer_donut_python_config(state: dict[str, torch.Tensor], settings: dict[str, Any]) -> ModelConfig:
    """Architecture from the tensors' shapes (and donut-python's config.json for what shapes don't tell)."""
    patch = state["encoder.model.patch_embed.proj.weight"]
    depths = []
    while any(k.startswith(f"encoder.model.layers.{len(depths)}.") for k in state):
        stage = len(depths)
        depths.append(
            len({k.split(".")[5] for k in state if k.startswith(f"encoder.model.layers.{stage}.blocks.")})
        )
    heads = [
        state[f"encoder.model.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]
        for i in range(len(depths))
    ]
    table = state["encoder.model.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    decoder_layers = len(
        {k.split(".")[5] for k in state if k.startswith("decoder.model.model.decoder.layers.")}
    )
    embeddings = state["decoder.model.model.decoder.embed_tokens.weight"]
    return ModelConfig(
        image_size=tuple(settings.get("input_size", (2560, 1920))),
        patch_size=patch.shape[-1],
        embed_dim=patch.shape[0],
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_size=round((table**0.5 + 1) / 2),
        decoder_layers=decoder_layers,
        d_model=embeddings.shape[1],
        decoder_heads=settings.get("decoder_attention_heads", 16),
        decoder_ffn_dim=state["decoder.model.model.decoder.layers.0.fc1.weight"].shape[0],
        max_length=state["decoder.model.model.decoder.embed_positions.weight"].shape[0] - 2,
        grid_positions=False,  # Donut's own encoder has none
        conv_stem=False,
        deep_stem=False,
    )


def import_donut_python(folder: Path) -> tuple[VisionEncoderDecoderModel, DonutProcessor]:
    """Read a donut-python checkpoint folder (`pytorch_model.bin` + `config.json` + its tokenizer files)."""
    folder = Path(folder)
    settings = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    config = _infer_donut_python_config(state, settings)
    tokenizer = load_tokenizer(folder)
    model, processor = build_model(config, tokenizer)
    converted = convert_donut_python_state_dict(state)
    vocab_rows = converted["decoder.model.decoder.embed_tokens.weight"].shape[0]
    if vocab_rows != len(tokenizer):
        model.decoder.resize_token_embeddings(vocab_rows)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    # Only recomputed buffers may be missing; anything unexpected is a mapping error.
    weights_missing = [k for k in missing if "relative_position_index" not in k]
    if weights_missing or unexpected:
        raise ValueError(
            f"donut-python checkpoint does not match: missing {weights_missing}, unexpected {unexpected}"
        )
    if vocab_rows < len(tokenizer):
        model.decoder.resize_token_embeddings(len(tokenizer))
    return model, processor


def describe(model: VisionEncoderDecoderModel, config: ModelConfig | None = None) -> dict[str, Any]:
    """Parameter counts and architecture, for run parameters and model cards."""
    info = {"parameters": sum(p.numel() for p in model.parameters())}
    info["encoder_parameters"] = sum(p.numel() for p in model.encoder.parameters())
    projection = model.encoder.embeddings.patch_embeddings.projection
    info["stem_convolutions"] = sum(isinstance(m, torch.nn.Conv2d) for m in projection.modules())
    if config is not None:
        info.update({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()})
    return info
