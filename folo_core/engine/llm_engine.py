"""``LLMEngine``: vLLM's synchronous engine surface over ``EngineCore``."""

from __future__ import annotations

import time
from typing import Any

from folo_core.config import EngineConfig, resolve_engine_config
from folo_core.engine.core import EngineCore
from folo_core.engine.core_client import CoreHealth, EngineCoreClient, MPClient
from folo_core.engine.output_processor import OutputProcessor, ParentRequest
from folo_core.engine.processor import ProcessedRequest, Processor, PromptType
from folo_core.engine.stats import EngineStats
from folo_core.hf_utils import engine_tokenizer, eos_token_ids, load_hf_config
from folo_core.outputs import RequestOutput
from folo_core.plugins import FoloPluginManager, get_plugin_manager
from folo_core.sampling_params import SamplingParams


class LLMEngine:
    """Tokenizing, detokenizing and ``n > 1`` fan-out over an ``EngineCoreClient``.

    The cores run in this process unless ``multiprocess_mode`` (one core process)
    or ``data_parallel_size > 1`` (one process per replica).
    """

    def __init__(self, config: EngineConfig, plugins: FoloPluginManager | None = None,
                 multiprocess_mode: bool = False) -> None:
        plugins = plugins or get_plugin_manager()
        model_config = config.model
        if model_config.model is None:
            from folo_core.default_model import default_model_path

            model_config = model_config.model_copy(update={"model": default_model_path()})
        model_path = model_config.model
        hf_config = load_hf_config(model_path)
        self.config = resolve_engine_config(config.model_copy(update={"model": model_config}), hf_config)
        self.tokenizer = engine_tokenizer(self.config.model)
        self.engine_core: EngineCoreClient = (
            MPClient(self.config, plugins, self.tokenizer)
            if multiprocess_mode or self.config.parallel.data_parallel_size > 1
            else EngineCore(self.config, plugins, self.tokenizer))
        self.processor = Processor(self.tokenizer, self.config.model.max_model_len, hf_config.vocab_size,
                                   eos_token_ids(hf_config, self.tokenizer, model_path),
                                   self.config.model.max_logprobs, self.engine_core.structured_output_manager)
        self.output_processor = OutputProcessor(self.tokenizer)

    @classmethod
    def from_engine_args(cls, **kwargs: Any) -> "LLMEngine":
        return cls(EngineConfig.from_kwargs(**kwargs))

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | None = None,
                    arrival_time: float | None = None, priority: int = 0) -> None:
        """Validate and queue a request; errors are raised here and leave the engine untouched."""
        self.add_processed_request(request_id, self.processor.process(prompt, params or SamplingParams()),
                                   arrival_time, priority)

    def add_processed_request(self, request_id: str, request: ProcessedRequest, arrival_time: float | None = None,
                              priority: int = 0) -> None:
        """Queue a request ``processor.process`` made (``AsyncLLM`` tokenizes off the engine thread)."""
        text, prompt_ids, params, cache_salt = (request.prompt, request.prompt_token_ids, request.params,
                                                request.cache_salt)
        if request_id in self.output_processor.states or request_id in self.output_processor.parents:
            raise ValueError(f"request id {request_id!r} is already in use")
        arrival_time = time.time() if arrival_time is None else arrival_time
        parent = ParentRequest(request_id, params) if params.n > 1 else None
        children = ([(child_id, parent.child_params(i)) for i, child_id in enumerate(parent.child_ids)]
                    if parent else [(request_id, params)])
        added: list[str] = []
        try:
            for index, (child_id, child_params) in enumerate(children):
                self.engine_core.add_request(child_id, prompt_ids, child_params, arrival_time, priority, cache_salt)
                added.append(child_id)
                self.output_processor.add_request(child_id, text, prompt_ids, child_params, arrival_time,
                                                  parent, index)
        except Exception:
            self.engine_core.abort_requests(added)  # all of a parent's children, or none
            self.output_processor.abort_requests(added)
            raise

    def abort_request(self, request_ids: str | list[str]) -> None:
        request_ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        request_ids = self.output_processor.expand_request_ids(request_ids)
        self.engine_core.abort_requests(request_ids)
        self.output_processor.abort_requests(request_ids)

    def step(self) -> list[RequestOutput]:
        outputs = self.engine_core.step()
        request_outputs, to_abort = self.output_processor.process_outputs(outputs)
        if to_abort:
            self.engine_core.abort_requests(to_abort)
        return request_outputs

    def has_unfinished_requests(self) -> bool:
        return self.engine_core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.engine_core.get_num_unfinished_requests()

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()

    def get_stats(self) -> EngineStats:
        return self.engine_core.get_stats()

    def health(self) -> CoreHealth:
        return self.engine_core.health()

    def shutdown(self) -> None:
        self.engine_core.shutdown()
