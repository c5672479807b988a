"""Speculative decoding (n-gram prompt lookup) on the multi-token step contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from folo_core import LLM, SamplingParams
from folo_core.config import CacheConfig, ConfigError, EngineConfig, SchedulerConfig
from folo_core.registry import PluginSelectionError
from folo_core.request import Request, RequestStatus
from folo_core.sched.output import ModelRunnerOutput
from folo_core.spec_decode.rejection_sampler import rejection_sample
from folo_core.utils import cdiv
from folo_plugins.continuous.scheduler import ContinuousScheduler
from folo_plugins.ngram.proposer import ngram_drafts
from folo_plugins.paged.kv_cache_manager import PagedKVCacheManager

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}


def repeating_prompts(n: int, seed: int = 0) -> list[dict]:
    """Prompts that repeat a random run of tokens, so the proposer finds matches."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        run = rng.integers(5, 500, int(rng.integers(6, 30))).tolist()
        prompts.append({"prompt_token_ids": (run * 3)[:int(rng.integers(10, 80))] + run[:3]})
    return prompts


def generate(path, prompts, params, **kwargs):
    llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", **kwargs)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return outputs, llm.llm_engine.get_stats().spec_decoding


# -- the proposer ---------------------------------------------------------------


def test_ngram_continues_the_earliest_occurrence_of_the_longest_suffix():
    tokens = np.array([1, 2, 3, 9, 9, 1, 2, 3, 4, 7, 2, 3])
    # Suffix [2, 3] first occurs at 1 (followed by 3, 9, 9, ...): the longest match wins over [3].
    assert ngram_drafts(tokens, 1, 3, 3) == [9, 9, 1]
    assert ngram_drafts(np.array([5, 6, 7, 8]), 1, 3, 3) == []  # nothing repeats
    assert ngram_drafts(np.array([4, 4]), 1, 3, 5) == [4]  # at most what follows the match
    assert ngram_drafts(np.array([1, 2, 3, 1, 2]), 3, 3, 2) == []  # suffixes shorter than min don't count


# -- rejection sampling -----------------------------------------------------------


def test_greedy_rows_keep_drafts_while_they_are_the_argmax():
    probs = torch.nn.functional.one_hot(torch.tensor([3, 5, 7, 2, 2, 4]), 10).float()
    # Request 0 (rows 0-3): drafts [3, 5, 1] vs argmax [3, 5, 7]: keeps 3, 5, then emits 7.
    # Request 1 (rows 4-5): draft [4] vs argmax [2] rejected, emits 2 (its bonus row is unused).
    assert rejection_sample(probs, [[3, 5, 1], [4]], {}) == [[3, 5, 7], [2]]
    # Every draft kept: the bonus row's token follows.
    assert rejection_sample(probs[:4], [[3, 5, 7]], {}) == [[3, 5, 7, 2]]


def test_rejection_sampling_draws_from_the_target_distribution():
    """The first emitted token must follow p whatever the draft: chi-square over 20k draws."""
    from scipy.stats import chisquare

    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    bonus = torch.tensor([0.25, 0.25, 0.25, 0.25])
    n = 20000
    for draft in (0, 2):  # a likely and an unlikely draft
        probs = torch.stack([p, bonus]).repeat(n, 1)
        first = [tokens[0] for tokens in rejection_sample(probs, [[draft]] * n, {})]
        counts = np.bincount(first, minlength=4)
        assert chisquare(counts, (p * n).numpy()).pvalue > 1e-3, (draft, counts)


def test_seeded_rows_are_reproducible():
    probs = torch.softmax(torch.randn(6, 50), dim=-1)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        runs.append(rejection_sample(probs, [[1, 2], [3]], {0: g}))
    assert runs[0][0] == runs[1][0]


# -- end to end: greedy output unchanged ----------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_outputs_identical_with_and_without_speculation(tiny_model, k):
    prompts = repeating_prompts(8)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref, _ = generate(tiny_model, prompts, params)
    out, stats = generate(tiny_model, prompts, params, speculative_config={**SPEC, "num_speculative_tokens": k})
    assert [o.outputs[0].token_ids for o in out] == [o.outputs[0].token_ids for o in ref]
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens > 0  # drafts were verified and kept
    assert stats.num_accepted_tokens < stats.num_draft_tokens  # and some rejected


def test_greedy_identical_with_prefix_caching_chunked_prefill_and_preemption(tiny_model_dir):
    path = tiny_model_dir("llama")
    prompts = repeating_prompts(12, seed=3)
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    tight = dict(num_gpu_blocks_override=40, block_size=4, max_num_batched_tokens=32, enable_prefix_caching=True)
    ref, _ = generate(path, prompts, params, **tight)  # the same KV size: it caps the output length too
    llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", speculative_config=SPEC, **tight)
    out = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in out] == [o.outputs[0].token_ids for o in ref]
    core = llm.llm_engine.engine_core
    assert core.scheduler.num_preemptions > 0  # preempted, some while holding drafts
    assert core.scheduler.spec_decoding_stats.num_accepted_tokens > 0
    assert core.kv_cache_manager.num_free_blocks == core.num_blocks  # nothing leaked


def test_stop_token_inside_an_accepted_run_ends_the_request_there(tiny_model_dir):
    path = tiny_model_dir("qwen2")
    prompts = repeating_prompts(8, seed=5)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref, _ = generate(path, prompts, params, speculative_config=SPEC)
    # Stop on a token each request emits after its 6th output token: wherever it falls in a run.
    for o in ref:
        tokens = o.outputs[0].token_ids
        stop = tokens[6]
        stop_params = SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[stop], ignore_eos=True)
        plain, _ = generate(path, [{"prompt_token_ids": o.prompt_token_ids}], stop_params)
        spec, _ = generate(path, [{"prompt_token_ids": o.prompt_token_ids}], stop_params, speculative_config=SPEC)
        assert spec[0].outputs[0].token_ids == plain[0].outputs[0].token_ids == tokens[:tokens.index(stop) + 1]
        assert spec[0].outputs[0].finish_reason == "stop"


def test_logprobs_per_emitted_token_match_without_speculation(tiny_model_dir):
    path = tiny_model_dir("qwen3")
    prompts = repeating_prompts(4, seed=9)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
    ref, _ = generate(path, prompts, params)
    out, stats = generate(path, prompts, params, speculative_config=SPEC)
    assert stats.num_accepted_tokens > 0
    for a, b in zip(ref, out):
        assert len(b.outputs[0].logprobs) == len(b.outputs[0].token_ids)
        for pa, pb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert pa.keys() == pb.keys()
            for t in pa:
                assert abs(pa[t].logprob - pb[t].logprob) < 1e-4


def test_penalties_and_logit_edits_apply_at_every_verified_position(tiny_model_dir):
    """A repetition penalty or a bad word at a draft position must count the drafts before it."""
    path = tiny_model_dir("llama")
    prompts = repeating_prompts(6, seed=11)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, repetition_penalty=1.3,
                            frequency_penalty=0.2, logit_bias={7: 2.0, 9: -1.0}, min_tokens=5,
                            stop_token_ids=[11])
    ref, _ = generate(path, prompts, params)
    out, _ = generate(path, prompts, params, speculative_config=SPEC)
    assert [o.outputs[0].token_ids for o in out] == [o.outputs[0].token_ids for o in ref]


def test_random_sampling_with_speculation_keeps_the_distribution(tiny_model_dir):
    """Chi-square of the 4th output token over many seeds, speculation on against off."""
    from scipy.stats import chi2_contingency

    path = tiny_model_dir("qwen2")
    prompt = repeating_prompts(1, seed=2)[0]
    n = 300
    prompts = [prompt] * n
    counts = []
    spec_stats = None
    for spec in (None, SPEC):
        params = [SamplingParams(temperature=0.6, max_tokens=4, ignore_eos=True, seed=1000 + i) for i in range(n)]
        llm = LLM(str(path), skip_tokenizer_init=True, dtype="float32", speculative_config=spec)
        outs = llm.generate(prompts, params, use_tqdm=False)
        counts.append(np.bincount([o.outputs[0].token_ids[3] for o in outs], minlength=512))
        spec_stats = llm.llm_engine.get_stats().spec_decoding
    assert spec_stats.num_accepted_tokens > 0
    table = np.array(counts)
    table = table[:, table.sum(0) > 0]
    assert chi2_contingency(table).pvalue > 1e-3


def test_seeded_sampling_with_speculation_is_reproducible(tiny_model_dir):
    path = tiny_model_dir("qwen3")
    prompts = repeating_prompts(4, seed=4)
    params = SamplingParams(temperature=0.8, max_tokens=30, ignore_eos=True, seed=123)
    first, _ = generate(path, prompts, params, speculative_config=SPEC)
    second, _ = generate(path, prompts, params, speculative_config=SPEC)
    assert [o.outputs[0].token_ids for o in first] == [o.outputs[0].token_ids for o in second]


def test_disable_by_batch_size_turns_drafting_off(tiny_model_dir):
    path = tiny_model_dir("qwen2")
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    _, stats = generate(path, repeating_prompts(4), params, speculative_config={**SPEC, "disable_by_batch_size": 4})
    assert stats.num_draft_tokens == 0


# -- configuration -------------------------------------------------------------------


def test_speculative_config_from_keyword_cli_json_and_file(tmp_path):
    assert EngineConfig.from_kwargs(speculative_config=SPEC).scheduler.speculative_config.num_speculative_tokens == 4
    import argparse

    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    args = parser.parse_args(["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'])
    spec = EngineConfig.from_cli_args(args).scheduler.speculative_config
    assert (spec.num_speculative_tokens, spec.prompt_lookup_max, spec.prompt_lookup_min) == (3, 5, 2)
    path = tmp_path / "engine.toml"
    path.write_text('[scheduler.speculative_config]\nmethod = "ngram"\nnum_speculative_tokens = 2\n'
                    'prompt_lookup_max = 4\n')
    assert EngineConfig.from_file(path).scheduler.speculative_config.prompt_lookup_max == 4
    with pytest.raises(ConfigError, match="speculative_config"):
        EngineConfig.from_kwargs(speculative_config="{not json")
    with pytest.raises(ConfigError, match="prompt_lookup_min"):
        EngineConfig.from_kwargs(speculative_config={**SPEC, "prompt_lookup_min": 4, "prompt_lookup_max": 2})


def test_unknown_proposer_is_refused_by_name(tiny_model_dir):
    with pytest.raises(PluginSelectionError, match="unknown proposer 'eagle9'.*ngram"):
        LLM(str(tiny_model_dir("qwen2")), skip_tokenizer_init=True, speculative_config={**SPEC, "method": "eagle9"})


# -- KV books under random accept/reject patterns ----------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data(), num_blocks=st.integers(6, 40), caching=st.booleans())
def test_random_accepts_and_rejects_never_leak_or_double_own_a_block(data, num_blocks, caching):
    """The real scheduler and paged KV manager, a fake runner that keeps a random number of each
    request's drafts and proposes random new ones; the books are checked after every step."""

    bs = 4
    manager = PagedKVCacheManager(num_blocks, bs, enable_caching=caching)
    scheduler = ContinuousScheduler(SchedulerConfig(max_num_batched_tokens=24), CacheConfig(block_size=bs), manager)
    shared = data.draw(st.lists(st.integers(0, 9), min_size=0, max_size=8))
    for i in range(data.draw(st.integers(1, 5))):
        prompt = shared + data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=12))
        scheduler.add_request(Request(str(i), prompt, SamplingParams(ignore_eos=True), max_tokens=12))
    for _ in range(60):
        if not scheduler.has_unfinished_requests():
            break
        so = scheduler.schedule()
        sampled, proposals = {}, {}
        for req_id, n in so.num_scheduled_tokens.items():
            request = scheduler.requests[req_id]
            drafts = so.scheduled_spec_decode_tokens.get(req_id, [])
            if request.num_computed_tokens + n < request.num_tokens + len(drafts):
                continue  # mid-prefill
            kept = data.draw(st.integers(0, len(drafts)))
            sampled[req_id] = drafts[:kept] + [data.draw(st.integers(0, 9))]
            proposals[req_id] = data.draw(st.lists(st.integers(0, 9), max_size=4))
        scheduler.update_from_output(so, ModelRunnerOutput(sampled_token_ids=sampled, spec_token_ids=proposals))
        owners: dict[int, int] = {}
        for request in scheduler.running:
            blocks = manager.get_block_ids(request.request_id)
            assert len(blocks) == cdiv(request.num_computed_tokens, bs)  # no slot past the computed tokens
            assert len(set(blocks)) == len(blocks)
            for b in blocks:
                owners[b] = owners.get(b, 0) + 1
        for b, count in owners.items():
            assert manager.block_pool.blocks[b].ref_cnt == count  # shared only through the prefix cache
        assert manager.num_free_blocks == num_blocks - len(owners)
    scheduler.finish_requests(list(scheduler.requests), RequestStatus.FINISHED_ABORTED)
    assert manager.num_free_blocks == num_blocks


def test_spec_decoding_counters_reach_llm_stats_and_prometheus(tiny_model_dir):
    pytest.importorskip("prometheus_client")
    from folo_core.engine.stats import IterationStats
    from folo_core.entrypoints.openai.metrics import PrometheusStatLogger

    llm = LLM(str(tiny_model_dir("qwen2")), skip_tokenizer_init=True, dtype="float32", speculative_config=SPEC)
    llm.generate(repeating_prompts(4), SamplingParams(temperature=0, max_tokens=30, ignore_eos=True), use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    spec = stats.spec_decoding
    assert spec.num_drafts > 0 and 0 < spec.acceptance_rate <= 1
    assert spec.mean_acceptance_length == 1 + spec.num_accepted_tokens / spec.num_drafts
    assert sum(spec.num_accepted_tokens_per_pos) == spec.num_accepted_tokens
    logger = PrometheusStatLogger("tiny")
    logger.record(stats, IterationStats())
    logger.record(stats, IterationStats())  # totals, not increments: counted once
    text = logger.render().decode()
    assert f'folo:spec_decode_num_accepted_tokens_total{{model_name="tiny"}} {float(spec.num_accepted_tokens)}' in text
    assert f'folo:spec_decode_num_draft_tokens_total{{model_name="tiny"}} {float(spec.num_draft_tokens)}' in text
    assert 'folo:spec_decode_num_accepted_tokens_per_pos_total{model_name="tiny",position="0"}' in text


@pytest.mark.slow
def test_smollm2_greedy_and_stop_strings_identical_with_speculation(smollm2_path):
    """The real model copying a passage: drafts get accepted; a stop string inside an accepted run
    ends the text and the tokens exactly where the plain run ends them."""
    messages = [{"role": "user", "content": "Repeat exactly: the quick brown fox jumps over the lazy dog, "
                                            "the quick brown fox jumps over the lazy dog again."}]
    plain_llm = LLM(smollm2_path, dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=40)
    ref = plain_llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
    words = ref.text.split()
    stop = " ".join(words[len(words) // 2:len(words) // 2 + 2])  # a string from the middle of the output
    stop_params = SamplingParams(temperature=0, max_tokens=40, stop=[stop])
    ref_stop = plain_llm.chat(messages, stop_params, use_tqdm=False)[0].outputs[0]
    for k in (2, 5):
        llm = LLM(smollm2_path, dtype="float32", speculative_config={**SPEC, "num_speculative_tokens": k})
        out = llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
        assert out.token_ids == ref.token_ids
        out_stop = llm.chat(messages, stop_params, use_tqdm=False)[0].outputs[0]
        assert (out_stop.text, out_stop.token_ids, out_stop.stop_reason) == \
            (ref_stop.text, ref_stop.token_ids, ref_stop.stop_reason)
        assert llm.llm_engine.get_stats().spec_decoding.num_accepted_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["guidance", "xgrammar"])
def test_structured_output_applies_at_every_verified_position(smollm2_path, backend):
    """Each draft position gets its own bitmask row: outputs stay valid, and greedy ones equal
    the plain engine's."""
    from folo_core import StructuredOutputsParams
    from folo_core.testing import check_structured_outputs

    engines = []
    for spec in (None, SPEC):
        llm = LLM(smollm2_path, max_model_len=1024, speculative_config=spec)
        llm.llm_engine.engine_core.structured_output_manager.backend_name = backend
        engines.append(llm)
    check_structured_outputs(engines[1], num_schemas=12, seed=3)
    messages = [{"role": "user", "content": "List the numbers one to twelve as JSON: [1, 2, 3, ..."}]
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 12, "maxItems": 12}
    params = SamplingParams(temperature=0, max_tokens=80, structured_outputs=StructuredOutputsParams(json=schema))
    plain, spec = (llm.chat(messages, params, use_tqdm=False)[0].outputs[0] for llm in engines)
    assert spec.token_ids == plain.token_ids and len(json.loads(spec.text)) == 12
    assert engines[1].llm_engine.get_stats().spec_decoding.num_accepted_tokens > 0
