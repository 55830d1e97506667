"""Donut's task-token scheme: every canonical label survives json2token -> token2json, and the tokenizer."""

from __future__ import annotations

from training.schema import empty_label
from training.tokenizer import SEPARATOR, TASK_TOKENS, json2token, special_tokens, target_sequence, token2json


def test_every_generated_label_round_trips_through_tokens(labels):
    for label in labels:
        assert token2json(target_sequence(label)) == label


def test_sequence_format_follows_donut():
    label = {
        **empty_label(),
        "total": "10.00",
        "line_items": [
            {"description": "A", "quantity": "1", "unit_price": None, "amount": "10.00"},
            {"description": "B", "quantity": None, "unit_price": None, "amount": None},
        ],
    }
    assert json2token(label) == (
        "<s_total>10.00</s_total><s_line_items><s_description>A</s_description><s_quantity>1</s_quantity>"
        "<s_amount>10.00</s_amount><sep/><s_description>B</s_description></s_line_items>"
    )
    assert token2json(TASK_TOKENS["invoice"] + json2token(label)) == label


def test_token2json_tolerates_broken_model_output():
    broken = "<s_invoice><s_total>5.00</s_total><s_vendor_name>ACME<s_currency>EUR</s_currency></s>"
    parsed = token2json(broken)
    assert parsed["total"] == "5.00" and parsed["currency"] == "EUR" and parsed["vendor_name"] is None
    assert token2json("garbage without tags") == empty_label()
    stray_separator = token2json(
        "<s_invoice><s_total>1.00</s_total><sep/><s_tax>0.19</s_tax><s_total>9</s_total>"
    )
    assert stray_separator["total"] == "1.00" and stray_separator["tax"] == "0.19"


def test_real_labels_with_partial_line_items_round_trip():
    label = {
        **empty_label(),
        "vendor_name": "Amazon Web Services",
        "line_items": [
            {"description": "AWS Data Transfer", "quantity": None, "unit_price": "0.01", "amount": None}
        ],
    }
    assert token2json(target_sequence(label)) == label


def test_tokenizer_is_built_offline_with_tags_as_single_tokens(tokenizer, tokenizer_dir):
    assert (tokenizer_dir / "sentencepiece.bpe.model").exists()
    for tag in special_tokens():
        assert len(tokenizer.tokenize(tag)) == 1, tag
    assert SEPARATOR in tokenizer.get_vocab()
    # Digits are split so that amounts and dates are spelled digit by digit.
    assert tokenizer.tokenize("1234")[-4:] == ["1", "2", "3", "4"]


def test_labels_round_trip_through_the_tokenizer(tokenizer, labels):
    for label in labels:
        ids = tokenizer(target_sequence(label), add_special_tokens=False).input_ids
        text = tokenizer.decode(ids, skip_special_tokens=False)
        assert token2json(text) == label


def test_token2json_never_raises_on_random_tag_soup():
    """An untrained decoder emits any mix of tags and text: parsing must always give a canonical label."""
    import random

    pieces = [*special_tokens(), "ACME", "12.50", " ", "</s>", "<s_unknown>", "</s_unknown>"]
    rng = random.Random(0)
    for _ in range(2000):
        label = token2json("".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))))
        assert set(label) == set(empty_label())
        assert all(
            value is None or isinstance(value, str) for key, value in label.items() if key != "line_items"
        )
