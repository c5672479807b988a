"""Prometheus metrics for ``GET /metrics`` (vLLM's metric set, ``folo:`` prefix).

``PrometheusStatLogger`` is a stat logger of the async engine: it is fed on the
engine thread after every loop turn (prometheus-client is thread-safe), and
keeps its own registry so several servers can live in one process (tests).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from folo_core.engine.stats import EngineStats, IterationStats, StatLoggerBase
from folo_core.spec_decode.metrics import SpecDecodingStats

_LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                    20.0, 40.0, 80.0]
_TPOT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
_E2E_BUCKETS = [0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0]


class PrometheusStatLogger(StatLoggerBase):
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry).labels(model_name)

        def histogram(name: str, doc: str, buckets: list[float]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry).labels(model_name)

        self.num_requests_running = gauge("folo:num_requests_running", "Requests in the running queue.")
        self.num_requests_waiting = gauge("folo:num_requests_waiting", "Requests in the waiting queue.")
        self.kv_cache_usage = gauge("folo:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).")
        self.prefix_cache_hit_rate = gauge("folo:prefix_cache_hit_rate",
                                           "Prefix-cache hits / queries, in tokens, since start.")
        self.prefix_cache_queries = counter("folo:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("folo:prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.prompt_tokens = counter("folo:prompt_tokens", "Prefilled prompt tokens.")
        self.generation_tokens = counter("folo:generation_tokens", "Generated tokens.")
        self.request_success = Counter("folo:request_success", "Finished requests, by finish reason.",
                                       ["model_name", "finished_reason"], registry=self.registry)
        self.time_to_first_token = histogram("folo:time_to_first_token_seconds",
                                             "Time from arrival to the first generated token.", _LATENCY_BUCKETS)
        self.time_per_output_token = histogram("folo:time_per_output_token_seconds",
                                               "Time between consecutive output tokens of a request.", _TPOT_BUCKETS)
        self.e2e_request_latency = histogram("folo:e2e_request_latency_seconds",
                                             "Time from arrival to the end of a request.", _E2E_BUCKETS)
        self._prefix_queries_seen = 0
        self._prefix_hits_seen = 0
        self.spec_num_drafts = counter("folo:spec_decode_num_drafts", "Request-steps that verified draft tokens.")
        self.spec_num_draft_tokens = counter("folo:spec_decode_num_draft_tokens", "Draft tokens verified.")
        self.spec_num_accepted_tokens = counter("folo:spec_decode_num_accepted_tokens", "Draft tokens kept.")
        self.spec_accepted_per_pos = Counter("folo:spec_decode_num_accepted_tokens_per_pos",
                                             "Draft tokens kept, by position in the draft.",
                                             ["model_name", "position"], registry=self.registry)
        self.spec_acceptance_rate = gauge("folo:spec_decode_acceptance_rate",
                                          "Kept / verified draft tokens, since start.")
        self.spec_mean_acceptance_length = gauge("folo:spec_decode_mean_acceptance_length",
                                                 "Tokens emitted per verifying request-step, since start.")
        self._spec_seen = SpecDecodingStats()

    def record(self, engine_stats: EngineStats, iteration_stats: IterationStats) -> None:
        self.num_requests_running.set(engine_stats.num_running)
        self.num_requests_waiting.set(engine_stats.num_waiting)
        self.kv_cache_usage.set(engine_stats.kv_cache_usage)
        prefix = engine_stats.prefix_cache
        self.prefix_cache_hit_rate.set(prefix.hit_rate)
        # The KV manager keeps running totals; counters take the increments.
        self.prefix_cache_queries.inc(max(0, prefix.queries - self._prefix_queries_seen))
        self.prefix_cache_hits.inc(max(0, prefix.hits - self._prefix_hits_seen))
        self._prefix_queries_seen, self._prefix_hits_seen = prefix.queries, prefix.hits
        self._record_spec_decoding(engine_stats.spec_decoding)

        self.prompt_tokens.inc(iteration_stats.num_prompt_tokens)
        self.generation_tokens.inc(iteration_stats.num_generation_tokens)
        for ttft in iteration_stats.time_to_first_tokens:
            self.time_to_first_token.observe(ttft)
        for tpot in iteration_stats.time_per_output_tokens:
            self.time_per_output_token.observe(tpot)
        for finished in iteration_stats.finished_requests:
            self.request_success.labels(self.model_name, finished.finish_reason).inc()
            self.e2e_request_latency.observe(finished.e2e_latency)

    def _record_spec_decoding(self, spec: SpecDecodingStats) -> None:
        seen = self._spec_seen
        self.spec_num_drafts.inc(spec.num_drafts - seen.num_drafts)
        self.spec_num_draft_tokens.inc(spec.num_draft_tokens - seen.num_draft_tokens)
        self.spec_num_accepted_tokens.inc(spec.num_accepted_tokens - seen.num_accepted_tokens)
        for pos, total in enumerate(spec.num_accepted_tokens_per_pos):
            before = seen.num_accepted_tokens_per_pos[pos] if pos < len(seen.num_accepted_tokens_per_pos) else 0
            if total > before:
                self.spec_accepted_per_pos.labels(self.model_name, str(pos)).inc(total - before)
        self.spec_acceptance_rate.set(spec.acceptance_rate)
        self.spec_mean_acceptance_length.set(spec.mean_acceptance_length)
        self._spec_seen = SpecDecodingStats(spec.num_drafts, spec.num_draft_tokens, spec.num_accepted_tokens,
                                            list(spec.num_accepted_tokens_per_pos))

    def render(self) -> bytes:
        return generate_latest(self.registry)
