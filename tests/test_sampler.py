"""The default sampler: truncation never leaks, penalties follow their definitions, seeds reproduce."""

from __future__ import annotations

import pytest
import torch

from folo_core import LLM, SamplingParams
from folo_core.sample.metadata import SamplingMetadata
from folo_plugins.sampler.sampler import DefaultSampler, apply_penalties
from helpers import random_prompts

VOCAB = 50


def metadata(batch: int, **kwargs) -> SamplingMetadata:
    temperature = kwargs.pop("temperature", torch.ones(batch))
    fields = dict(temperature=temperature, all_greedy=False, all_random=bool((temperature > 0).all()),
                  top_p=None, top_k=None, min_p=None, generators={}, max_num_logprobs=None)
    fields.update(kwargs)
    return SamplingMetadata(**fields)


def draw(logits: torch.Tensor, md: SamplingMetadata, n: int = 400) -> set[int]:
    sampler = DefaultSampler()
    return {int(sampler(logits.clone(), md).sampled_token_ids[0]) for _ in range(n)}


@pytest.fixture
def logits() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, VOCAB)


def test_top_k_only_path_masks_like_a_sort():
    """Top-k skips the full sort; it keeps exactly what a sort keeps (ties at the k-th value
    included), and rows without top-k keep everything."""
    from folo_plugins.sampler.sampler import apply_top_k_only

    torch.manual_seed(1)
    logits = torch.randn(5, VOCAB).round(decimals=1)  # rounding makes ties
    top_k = torch.tensor([1, 3, 0, 7, VOCAB + 5])
    masked = apply_top_k_only(logits.clone(), top_k)
    for row, k in enumerate(top_k.tolist()):
        kth = logits[row].sort(descending=True).values[min(k, VOCAB) - 1] if k > 0 else -float("inf")
        assert torch.equal(torch.isinf(masked[row]), logits[row] < kth)
    assert torch.isinf(masked[0]).sum() < VOCAB and not torch.isinf(masked[2]).any()


@pytest.mark.parametrize("scale", [5.0, 8.0])
def test_top_p_from_candidates_equals_the_full_sort(scale):
    """Peaked rows (the usual case) take the candidate path and keep exactly the sorted nucleus."""
    from folo_plugins.sampler import sampler

    torch.manual_seed(2)
    logits = torch.randn(6, 4096) * scale
    top_p = torch.tensor([0.1, 0.5, 0.8, 0.9, 0.95, 0.99])
    with_candidates = sampler.apply_top_p_partial(logits, top_p)
    assert with_candidates is not None
    assert torch.equal(torch.isinf(with_candidates), torch.isinf(sampler.apply_top_p_sorted(logits, top_p)))


def test_flat_rows_fall_back_to_the_sort(monkeypatch):
    from folo_plugins.sampler import sampler

    monkeypatch.setattr(sampler, "_TOP_P_CANDIDATES", 16)
    logits = torch.zeros(2, 256)  # uniform: 16 candidates hold 1/16 of the mass
    top_p = torch.tensor([0.5, 0.9])
    assert sampler.apply_top_p_partial(logits, top_p) is None
    kept = (~torch.isinf(sampler.apply_top_k_top_p(logits, None, top_p))).sum(dim=-1)
    assert kept.tolist() == [128, 231]  # ceil(p * 256) tokens


def test_top_k_never_leaves_the_top_k(logits):
    allowed = set(logits[0].topk(5).indices.tolist())
    seen = draw(logits, metadata(1, top_k=torch.tensor([5])))
    assert seen <= allowed and len(seen) > 1


def test_top_p_never_leaves_the_nucleus(logits):
    probs = logits[0].softmax(-1)
    order = probs.argsort(descending=True)
    cumulative = probs[order].cumsum(0)
    nucleus = set(order[: int((cumulative < 0.6).sum()) + 1].tolist())  # smallest set reaching 0.6
    seen = draw(logits, metadata(1, top_p=torch.tensor([0.6])))
    assert seen <= nucleus and len(seen) > 1


def test_min_p_never_emits_unlikely_tokens(logits):
    probs = logits[0].softmax(-1)
    allowed = set(torch.nonzero(probs >= 0.2 * probs.max()).flatten().tolist())
    seen = draw(logits, metadata(1, min_p=torch.tensor([0.2])))
    assert seen <= allowed and len(seen) > 1


def test_greedy_rows_ignore_randomness(logits):
    md = metadata(2, temperature=torch.tensor([0.0, 1.0]), all_greedy=False, all_random=False)
    batch = logits.repeat(2, 1)
    firsts = {int(DefaultSampler()(batch.clone(), md).sampled_token_ids[0]) for _ in range(50)}
    assert firsts == {int(logits.argmax())}


def test_penalties_follow_definitions():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5, -1.0]])
    md = metadata(
        1,
        repetition_penalties=torch.tensor([2.0]),
        presence_penalties=torch.tensor([0.5]),
        frequency_penalties=torch.tensor([0.25]),
        prompt_token_ids=[[0, 1]],
        output_token_ids=[[2, 2, 3]],
    )
    out = apply_penalties(logits.clone(), md)[0]
    # token 0 (prompt, positive): /2; token 1 (prompt, negative): *2; no frequency/presence (prompt only)
    assert out[0].item() == pytest.approx(1.0)
    assert out[1].item() == pytest.approx(-4.0)
    # token 2: output twice: 1/2 - 0.25*2 - 0.5 ; token 3: output once: 0.5/2 - 0.25 - 0.5
    assert out[2].item() == pytest.approx(0.5 - 0.5 - 0.5)
    assert out[3].item() == pytest.approx(0.25 - 0.25 - 0.5)
    assert out[4].item() == pytest.approx(-1.0)  # untouched


def test_logprobs_are_the_raw_log_softmax(logits):
    md = metadata(1, temperature=torch.tensor([0.0]), all_greedy=True, all_random=False, max_num_logprobs=3)
    out = DefaultSampler()(logits.clone(), md)
    reference = logits.log_softmax(-1)[0]
    assert out.logprob_token_ids[0, 0] == logits.argmax()
    assert out.ranks[0, 0] == 1
    torch.testing.assert_close(out.logprobs[0, 1:], reference.topk(3).values)


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(str(tiny_model_dir("qwen2")), skip_tokenizer_init=True, dtype="float32")


def test_seeded_requests_reproduce_across_batches(llm):
    prompts = [{"prompt_token_ids": p} for p in random_prompts(4, 512, seed=1)]
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate(prompts[0], seeded, use_tqdm=False)[0].outputs[0].token_ids
    unseeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    mixed = llm.generate(prompts, [seeded, unseeded, unseeded, seeded], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=16, ignore_eos=True)
    assert llm.generate(prompts[0], other_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_stop_token_ids_and_min_tokens(llm):
    prompt = {"prompt_token_ids": random_prompts(1, 512, seed=2)[0]}
    free = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)
    tokens = free[0].outputs[0].token_ids
    stop_at = tokens[3]
    first = tokens.index(stop_at)
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_at]),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == tokens[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at
    delayed = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_at],
                                                   min_tokens=first + 2), use_tqdm=False)[0].outputs[0]
    assert stop_at not in delayed.token_ids[: first + 2]


def test_logprobs_on_outputs(llm):
    prompt = {"prompt_token_ids": random_prompts(1, 512, seed=4)[0]}
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=5, logprobs=3, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.logprobs) == 5
    for token, position in zip(out.token_ids, out.logprobs):
        assert token in position and position[token].rank == 1  # greedy: the top token
        assert len(position) == 3
    assert out.cumulative_logprob == pytest.approx(sum(p[t].logprob for t, p in zip(out.token_ids, out.logprobs)))


def test_n_completions_per_prompt(llm):
    prompt = {"prompt_token_ids": random_prompts(1, 512, seed=6)[0]}
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=6, ignore_eos=True)
    out = llm.generate([prompt, prompt], params, use_tqdm=False)
    assert len(out) == 2
    for request_output in out:
        assert request_output.finished
        assert [c.index for c in request_output.outputs] == [0, 1, 2]
        assert all(len(c.token_ids) == 6 for c in request_output.outputs)
    assert len({tuple(c.token_ids) for c in out[0].outputs}) > 1  # children sample independently
    # child i of a seeded request uses seed + i
    single = llm.generate(prompt, SamplingParams(temperature=1.0, seed=8, max_tokens=6, ignore_eos=True),
                          use_tqdm=False)[0]
    assert out[0].outputs[1].token_ids == single.outputs[0].token_ids
    greedy = llm.generate(prompt, SamplingParams(n=2, temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)[0]
    assert greedy.outputs[0].token_ids == greedy.outputs[1].token_ids
