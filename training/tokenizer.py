"""Donut's task-token scheme for invoices and an offline SentencePiece tokenizer.

A label becomes `<s_invoice><s_vendor_name>ACME</s_vendor_name>...<s_line_items><s_description>..</s_description>
...<sep/>...</s_line_items></s>`: the same `json2token`/`token2json` convention as donut-python, with null fields
left out so that the model only writes what the page shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from training.schema import FIELDS, LINE_ITEM_FIELDS, SCALAR_FIELDS, empty_label

TASK_TOKENS: dict[str, str] = {"invoice": "<s_invoice>", "reading": "<s_reading>"}
SEPARATOR = "<sep/>"


def field_tokens() -> list[str]:
    """Start and end tags of every canonical field and line-item field."""
    return [tag for field in (*FIELDS, *LINE_ITEM_FIELDS) for tag in (f"<s_{field}>", f"</s_{field}>")]


def special_tokens() -> list[str]:
    return [*TASK_TOKENS.values(), SEPARATOR, *field_tokens()]


def json2token(value: Any) -> str:
    """Serialise a label as Donut's tag sequence; null and empty values are left out."""
    if isinstance(value, dict):
        return "".join(
            f"<s_{key}>{json2token(item)}</s_{key}>"
            for key, item in value.items()
            if item not in (None, "", [])
        )
    if isinstance(value, list):
        return SEPARATOR.join(json2token(item) for item in value)
    return str(value)


def _parse(tokens: str, inner: bool = False) -> Any:
    """donut-python's token2json: tolerant of missing end tags and trailing garbage."""
    output: dict[str, Any] = {}
    while tokens:
        start = re.search(r"<s_(.*?)>", tokens)
        if start is None:
            break
        key = start.group(1)
        end = re.search(rf"</s_{re.escape(key)}>", tokens)
        if end is None:
            tokens = tokens.replace(start.group(), "", 1)
            continue
        content = re.search(f"{re.escape(start.group())}(.*?){re.escape(end.group())}", tokens, re.S)
        if content is not None:
            inside = content.group(1).strip()
            if "<s_" in inside and "</s_" in inside:
                value = _parse(inside, inner=True)
                if value:
                    output[key] = value[0] if len(value) == 1 else value
            else:
                leaves = [leaf.strip() for leaf in inside.split(SEPARATOR)]
                output[key] = leaves[0] if len(leaves) == 1 else leaves
        tokens = tokens[tokens.find(end.group()) + len(end.group()) :].strip()
        if tokens.startswith(SEPARATOR):
            return [output, *_parse(tokens[len(SEPARATOR) :], inner=True)]
    if output:
        return [output] if inner else output
    return [] if inner else {}


def token2json(sequence: str) -> dict[str, Any]:
    """Parse a generated sequence into a canonical label (fields it lacks are null)."""
    parsed = _parse(sequence)
    if isinstance(parsed, list):  # a stray <sep/> at the top level: merge the pieces, first value wins
        merged: dict[str, Any] = {}
        for piece in parsed:
            for key, value in piece.items() if isinstance(piece, dict) else ():
                merged.setdefault(key, value)
        parsed = merged
    label = empty_label()
    for field in SCALAR_FIELDS:
        value = parsed.get(field)
        label[field] = value if isinstance(value, str) and value else None
    items = parsed.get("line_items")
    items = [items] if isinstance(items, dict) else items if isinstance(items, list) else []
    parsed_items = [
        {
            key: (item.get(key) if isinstance(item.get(key), str) and item.get(key) else None)
            for key in LINE_ITEM_FIELDS
        }
        for item in items
        if isinstance(item, dict)
    ]
    label["line_items"] = parsed_items or None
    return label


def target_sequence(label: dict[str, Any], task: str = "invoice") -> str:
    """The decoder target for a label: task token, tags, end of sequence added by the tokenizer."""
    return TASK_TOKENS[task] + json2token(label)


def label_corpus(labels: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Every printed value of the labels: what the tokenizer must spell compactly."""
    for label in labels:
        for field in SCALAR_FIELDS:
            if label.get(field):
                yield str(label[field])
        for item in label.get("line_items") or []:
            yield from (str(v) for v in item.values() if v)


def build_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 2000):
    """Train a SentencePiece unigram model offline (digits split, byte fallback for unseen characters) and
    wrap it as an XLM-R tokenizer with the field tags as special tokens; saved to `out_dir`."""
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # XLM-R's id layout: <s>=0, <pad>=1, </s>=2, <unk>=3.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_prefix=str(out_dir / "sentencepiece.bpe"),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        split_digits=True,
        byte_fallback=True,
        character_coverage=1.0,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
        num_threads=1,
    )
    tokenizer = XLMRobertaTokenizer.from_pretrained(str(out_dir))
    tokenizer.add_tokens(special_tokens(), special_tokens=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def load_tokenizer(path: Path | str):
    """A tokenizer saved by `build_tokenizer` or shipped with a pretrained Donut."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    missing = [token for token in special_tokens() if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer
