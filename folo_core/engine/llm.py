"""``LLM``: the offline API, call-compatible with vLLM's ``LLM``."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from folo_core.config import EngineConfig
from folo_core.engine.chat_utils import ChatMessage, render_chat
from folo_core.engine.errors import EngineStepError
from folo_core.engine.llm_engine import LLMEngine
from folo_core.engine.processor import PromptType
from folo_core.outputs import RequestOutput
from folo_core.sampling_params import SamplingParams


class LLM:
    """``LLM(model=PATH, dtype=..., **engine_options)``; ``model=None`` runs the embedded SmolLM2."""

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        self.llm_engine = LLMEngine(EngineConfig.from_kwargs(model=model, **kwargs))
        self._counter = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.get_tokenizer()

    def reset_prefix_cache(self) -> bool:
        return self.llm_engine.reset_prefix_cache()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order."""
        if isinstance(prompts, (str, Mapping)) or not isinstance(prompts, Sequence):
            prompts = [prompts]  # a single prompt (bad ones are named by the processor)
        prompts = list(prompts)
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"got {len(params_list)} sampling_params for {len(prompts)} prompts")
        if priority is not None and len(priority) != len(prompts):
            raise ValueError(f"got {len(priority)} priorities for {len(prompts)} prompts")
        request_ids = self._add_requests(prompts, params_list, priority)
        return self._run_engine(request_ids, use_tqdm)

    def chat(
        self,
        messages: list[ChatMessage] | list[list[ChatMessage]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to one conversation or a list of them, then generate.

        ``tools`` (OpenAI's function definitions) are shown to the template, as vLLM's ``LLM.chat``.
        """
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.render_chat(conv, chat_template, add_generation_prompt, chat_template_kwargs, tools)
                   for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def render_chat(self, conversation: list[ChatMessage], chat_template: str | None = None,
                    add_generation_prompt: bool = True, chat_template_kwargs: dict[str, Any] | None = None,
                    tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return render_chat(self.get_tokenizer(), conversation, chat_template, add_generation_prompt,
                           chat_template_kwargs, self.llm_engine.processor.max_prompt_chars, tools)

    def _add_requests(self, prompts: list[PromptType], params_list: list[SamplingParams],
                      priority: Sequence[int] | None) -> list[str]:
        request_ids: list[str] = []
        try:
            for i, (prompt, params) in enumerate(zip(prompts, params_list)):
                request_id = str(next(self._counter))
                self.llm_engine.add_request(request_id, prompt, params,
                                            priority=priority[i] if priority else 0)
                request_ids.append(request_id)
        except Exception:
            self.llm_engine.abort_request(request_ids)  # all or nothing
            raise
        return request_ids

    @contextlib.contextmanager
    def _aborted_on_error(self, request_ids: list[str]) -> Iterator[None]:
        """If a step fails, withdraw this call's requests so the engine stays usable."""
        try:
            yield
        except BaseException:
            self.llm_engine.abort_request(request_ids)
            raise

    def _run_engine(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Processed prompts", dynamic_ncols=True, disable=not use_tqdm)
        start, prompt_tokens, output_tokens = time.perf_counter(), 0, 0
        with bar, self._aborted_on_error(request_ids):
            while self.llm_engine.has_unfinished_requests():
                for output in self.llm_engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        prompt_tokens += len(output.prompt_token_ids)
                        output_tokens += len(output.outputs[0].token_ids)
                        elapsed = time.perf_counter() - start
                        bar.set_postfix_str(f"input: {prompt_tokens / elapsed:.1f} toks/s, "
                                            f"output: {output_tokens / elapsed:.1f} toks/s", refresh=False)
                        bar.update(1)
        outputs = [finished[r] for r in request_ids]
        errors = [c.error for o in outputs for c in o.outputs if c.finish_reason == "error"]
        if errors:  # the others ran to the end; they travel with the error
            raise EngineStepError(f"{len(errors)} of {len(outputs)} request(s) failed; first: {errors[0]}", outputs)
        return outputs
