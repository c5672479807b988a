"""Incremental detokenization: stop strings across chunks, multi-byte characters, deltas."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from folo_core.engine.detokenizer import IncrementalDetokenizer
from folo_core.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tokenizer(qwen3_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir))


def stream(tokenizer, text: str, params: SamplingParams, delta: bool = True):
    """Feed ``text`` one token at a time; returns (chunks, stop string, final text)."""
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Say:"), params)
    chunks, stop = [], None
    for token_id in tokenizer.encode(text):
        stop, _ = detok.update([token_id], stop_terminated=False)
        chunks.append(detok.get_next_output_text(finished=stop is not None, delta=delta))
        if stop:
            break
    if stop is None:
        chunks.append(detok.get_next_output_text(finished=True, delta=delta))
    return chunks, stop, detok.output_text


def test_multibyte_characters_never_split(tokenizer):
    text = "Emoji 😀 and 你好世界 done"
    chunks, _, final = stream(tokenizer, text, SamplingParams())
    assert "".join(chunks) == text == final
    assert all("\ufffd" not in c for c in chunks)


def test_stop_string_across_chunks_is_cut_and_never_leaks(tokenizer):
    text = "alpha beta STOPWORD gamma"
    params = SamplingParams(stop=["STOPWORD"])
    chunks, stop, final = stream(tokenizer, text, params)
    assert stop == "STOPWORD"
    assert final == "alpha beta "
    assert "".join(chunks) == "alpha beta "
    assert not any("STOP" in c for c in chunks)


def test_include_stop_str_in_output(tokenizer):
    params = SamplingParams(stop=["beta"], include_stop_str_in_output=True)
    _, stop, final = stream(tokenizer, "alpha beta gamma", params)
    assert stop == "beta" and final == "alpha beta"


def test_cumulative_output(tokenizer):
    chunks, _, final = stream(tokenizer, "one two three", SamplingParams(), delta=False)
    assert chunks[-1] == final == "one two three"
    assert all(final.startswith(c) for c in chunks)


def test_several_tokens_at_once_stop_at_the_one_that_completes_the_stop_string(tokenizer):
    """A step that keeps draft tokens brings several: those after the stop string are not output."""
    params = SamplingParams(stop=["world"])
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Say:"), params)
    ids = tokenizer.encode(" hello world and more words")
    stop, used = detok.update(ids, stop_terminated=False)
    assert stop == "world" and detok.output_text == " hello "
    assert tokenizer.decode(ids[:used]).endswith("world") and used < len(ids)
