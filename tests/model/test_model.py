"""Building, saving, loading and importing Donut models, all offline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from training.model import (
    build_model,
    conv_stem,
    describe,
    encoder_grid,
    grid_position_codes,
    import_donut_python,
    load_pretrained,
    save_model,
)
from training.tokenizer import TASK_TOKENS


def logits(model, pixel_values, decoder_input_ids):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids).logits


def inputs(config, tokenizer):
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, *config.image_size)
    ids = tokenizer(
        TASK_TOKENS["invoice"] + "<s_total>12.50</s_total>", add_special_tokens=False, return_tensors="pt"
    ).input_ids
    return pixel_values, ids


def test_presets_build_and_generate(micro_config, tokenizer):
    model, processor = build_model(micro_config, tokenizer)
    info = describe(model, micro_config)
    assert 0 < info["encoder_parameters"] < info["parameters"] < 5_000_000
    pixel_values, _ = inputs(micro_config, tokenizer)
    out = model.generate(pixel_values, max_new_tokens=5, do_sample=False)
    assert out[0, 0].item() == tokenizer.convert_tokens_to_ids(TASK_TOKENS["invoice"])
    assert processor.image_processor.size == {"height": 320, "width": 240}


def test_conv_stem_gives_the_patch_projection_grid(micro_config, tokenizer):
    """The stem is a drop-in for the patch projection: the same token grid and width, whatever the patch size."""
    for patch, width in ((4, 32), (8, 64), (16, 96)):
        for deep in (False, True):
            assert conv_stem(patch, width, deep)(torch.zeros(2, 3, 320, 240)).shape == (
                2,
                width,
                320 // patch,
                240 // patch,
            )
    with pytest.raises(ValueError, match="patch size"):
        conv_stem(6, 64)
    models = {
        "deep": build_model(micro_config, tokenizer)[0],
        "shallow": build_model(micro_config.with_overrides(deep_stem=False), tokenizer)[0],
        "plain": build_model(micro_config.with_overrides(conv_stem=False), tokenizer)[0],
    }
    pixel_values, _ = inputs(micro_config, tokenizer)
    with torch.no_grad():
        shapes = {m.encoder(pixel_values=pixel_values).last_hidden_state.shape for m in models.values()}
    assert len(shapes) == 1
    assert {name: describe(m)["stem_convolutions"] for name, m in models.items()} == {
        "deep": 5,
        "shallow": 3,
        "plain": 1,
    }


def test_a_saved_stem_loads_with_its_own_depth(micro_config, tokenizer, tmp_path):
    """A config saved before `deep_stem` existed (the bases shipped before it) loads as the three-layer stem it was
    trained with; a deep stem loads deep."""
    for deep in (False, True):
        model, processor = build_model(micro_config.with_overrides(deep_stem=deep), tokenizer)
        save_model(model, processor, tmp_path / str(deep))
        if not deep:
            saved = json.loads((tmp_path / "False" / "config.json").read_text())
            del saved["encoder"]["deep_stem"]
            (tmp_path / "False" / "config.json").write_text(json.dumps(saved))
        loaded, _ = load_pretrained(tmp_path / str(deep))
        assert describe(loaded)["stem_convolutions"] == (5 if deep else 3)


def test_save_and_load_pretrained_from_a_local_path_is_exact(micro_config, tokenizer, tmp_path):
    model, processor = build_model(micro_config, tokenizer)
    pixel_values, ids = inputs(micro_config, tokenizer)
    model.train()
    model(pixel_values=pixel_values, decoder_input_ids=ids)  # moves the stem's batch-norm statistics
    save_model(model, processor, tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()
    loaded, loaded_processor = load_pretrained(tmp_path / "checkpoint")
    assert isinstance(loaded.encoder.embeddings.patch_embeddings.projection, torch.nn.Sequential)
    assert torch.equal(logits(model, pixel_values, ids), logits(loaded, pixel_values, ids))
    assert loaded.config.decoder_start_token_id == model.config.decoder_start_token_id
    assert loaded_processor.image_processor.size == processor.image_processor.size


def test_grid_positions_are_added_to_the_encoder_output_and_survive_saving(micro_config, tokenizer, tmp_path):
    """The same weights with and without the codes differ by exactly the codes; a saved model keeps them."""
    with_codes, processor = build_model(micro_config, tokenizer)
    without, _ = build_model(micro_config.with_overrides(grid_positions=False), tokenizer)
    without.load_state_dict(with_codes.state_dict())
    pixel_values, _ = inputs(micro_config, tokenizer)
    with_codes.eval(), without.eval()
    with torch.no_grad():
        difference = (
            with_codes.encoder(pixel_values=pixel_values).last_hidden_state
            - without.encoder(pixel_values=pixel_values).last_hidden_state
        )
    rows, cols, _ = encoder_grid(with_codes.encoder.config, *micro_config.image_size)
    codes = grid_position_codes(rows, cols, difference.shape[-1])
    assert torch.allclose(difference[0], codes, atol=1e-5) and len(codes.unique(dim=0)) == rows * cols
    save_model(with_codes, processor, tmp_path / "checkpoint")
    loaded, _ = load_pretrained(tmp_path / "checkpoint")
    with torch.no_grad():
        assert torch.equal(
            loaded.encoder(pixel_values=pixel_values).last_hidden_state,
            with_codes.encoder(pixel_values=pixel_values).last_hidden_state,
        )


def test_a_pretrained_donut_without_invoice_tags_gets_them(micro_config, tokenizer_dir, tmp_path):
    """A base checkpoint (like donut-base) whose tokenizer lacks our tags: tags are added, embeddings grown."""
    from transformers import XLMRobertaTokenizer

    plain_dir = tmp_path / "plain-tokenizer"
    plain_dir.mkdir()
    shutil.copy(tokenizer_dir / "sentencepiece.bpe.model", plain_dir)
    plain = XLMRobertaTokenizer.from_pretrained(str(plain_dir))
    plain.add_tokens(["<s_base>"], special_tokens=True)
    base, processor = build_model(micro_config, plain)
    save_model(base, processor, tmp_path / "base")
    vocab_before = base.decoder.get_input_embeddings().num_embeddings

    model, processor = load_pretrained(tmp_path / "base")
    assert len(processor.tokenizer) > vocab_before
    assert model.decoder.get_input_embeddings().num_embeddings == len(processor.tokenizer)
    assert model.config.decoder_start_token_id == processor.tokenizer.convert_tokens_to_ids(
        TASK_TOKENS["invoice"]
    )
    pixel_values, ids = inputs(micro_config, processor.tokenizer)
    assert logits(model, pixel_values, ids).shape[-1] == len(processor.tokenizer)


def write_donut_python_checkpoint(model, tokenizer_dir, folder, input_size):
    """The layout donut-python saves: timm Swin names with fused qkv, MBart under decoder.model, config.json."""
    folder.mkdir()
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("decoder."):
            state["decoder.model." + key[len("decoder.") :]] = tensor
            continue
        name = key.replace("encoder.encoder.layers.", "encoder.model.layers.").replace(
            "encoder.embeddings.", "encoder.model."
        )
        name = name.replace("patch_embeddings.projection", "patch_embed.proj").replace(
            "model.norm.", "model.patch_embed.norm."
        )
        for new, old in (
            ("attention.output.dense", "attn.proj"),
            ("attention.self.relative_position", "attn.relative_position"),
            ("layernorm_before", "norm1"),
            ("layernorm_after", "norm2"),
            ("intermediate.dense", "mlp.fc1"),
            ("output.dense", "mlp.fc2"),
        ):
            name = name.replace(new, old)
        if ".attention.self.query." in name:
            prefix, kind = name.split(".attention.self.query.")
            parts = [
                model.state_dict()[key.replace(".query.", f".{part}.")] for part in ("query", "key", "value")
            ]
            state[f"{prefix}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
        elif ".attention.self.key." not in name and ".attention.self.value." not in name:
            state[name] = tensor
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "input_size": list(input_size),
                "align_long_axis": False,
                "decoder_attention_heads": model.decoder.config.decoder_attention_heads,
            }
        )
    )
    for name in ("sentencepiece.bpe.model", "tokenizer_config.json", "tokenizer.json"):
        shutil.copy(tokenizer_dir / name, folder)
    return state


def test_donut_python_checkpoint_imports_with_identical_outputs(
    micro_config, tokenizer, tokenizer_dir, tmp_path
):
    original, _ = build_model(
        micro_config.with_overrides(grid_positions=False, conv_stem=False), tokenizer
    )  # as Donut's
    state = write_donut_python_checkpoint(
        original, tokenizer_dir, tmp_path / "donut", micro_config.image_size
    )
    assert any(".attn.qkv.weight" in k for k in state) and "decoder.model.lm_head.weight" in state
    imported, processor = import_donut_python(tmp_path / "donut")
    pixel_values, ids = inputs(micro_config, tokenizer)
    assert torch.allclose(logits(original, pixel_values, ids), logits(imported, pixel_values, ids), atol=1e-5)
    assert processor.image_processor.size == {"height": 320, "width": 240}


def test_import_donut_cli_writes_a_checkpoint_that_loads_as_a_base(
    micro_config, tokenizer, tokenizer_dir, tmp_path
):
    import subprocess

    original, _ = build_model(micro_config.with_overrides(grid_positions=False, conv_stem=False), tokenizer)
    write_donut_python_checkpoint(original, tokenizer_dir, tmp_path / "donut", micro_config.image_size)
    result = subprocess.run(
        ["invoice", "model", "import-donut", str(tmp_path / "donut"), "--out", str(tmp_path / "converted")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["parameters"] == sum(
        p.numel() for p in original.parameters()
    )
    converted, _ = load_pretrained(tmp_path / "converted")
    pixel_values, ids = inputs(micro_config, tokenizer)
    assert torch.allclose(
        logits(original, pixel_values, ids), logits(converted, pixel_values, ids), atol=1e-5
    )
