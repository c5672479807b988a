"""Text in, text out with the real Qwen3 tokenizer on a random Qwen3 model; chat template."""

from __future__ import annotations

import shutil

import pytest

from folo_core import LLM, SamplingParams


@pytest.fixture(scope="module")
def qwen3_with_tokenizer(tiny_model_dir, qwen3_tokenizer_dir, tmp_path_factory):
    src = tiny_model_dir("qwen3", vocab_size=151936)
    target = tmp_path_factory.mktemp("qwen3-tok")
    shutil.copytree(src, target, dirs_exist_ok=True)
    for f in qwen3_tokenizer_dir.iterdir():
        shutil.copy(f, target / f.name)
    return target


@pytest.fixture(scope="module")
def llm(qwen3_with_tokenizer):
    return LLM(str(qwen3_with_tokenizer), dtype="float32", max_model_len=256)


def test_text_in_text_out(llm):
    tokenizer = llm.get_tokenizer()
    prompt = "Hello wörld, 你好 😀"
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)[0]
    assert out.prompt == prompt
    assert out.prompt_token_ids == tokenizer.encode(prompt)
    assert len(out.outputs[0].token_ids) == 20
    assert out.outputs[0].text == tokenizer.decode(out.outputs[0].token_ids, skip_special_tokens=True)


def test_chat_template_applied(llm):
    tokenizer = llm.get_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert out.prompt == expected
    assert out.prompt_token_ids == tokenizer.encode(expected, add_special_tokens=False)
    assert "<|im_start|>assistant" in out.prompt


def test_batch_of_conversations(llm):
    conversations = [[{"role": "user", "content": f"Count to {i}."}] for i in range(3)]
    outs = llm.chat(conversations, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert [f"Count to {i}." in o.prompt for i, o in enumerate(outs)] == [True] * 3


def test_stop_strings_cut_the_text(llm):
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    free = llm.generate("Tell me a story.", params, use_tqdm=False)[0].outputs[0]
    stop = free.text[len(free.text) // 2:][:3]  # a string the greedy continuation is known to produce
    assert stop.strip(), free.text
    cut = llm.generate("Tell me a story.", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == free.text[:free.text.index(stop)]
    assert stop not in cut.text
    assert len(cut.token_ids) <= len(free.token_ids)
