"""``POST /v1/completions``: a text (or token-id) prompt in, text out."""

from __future__ import annotations

from pydantic import BaseModel

from folo_core.engine.processor import PromptType
from folo_core.entrypoints.openai.protocol import (CompletionLogProbs, CompletionRequest, CompletionResponse,
                                                   CompletionResponseChoice, UsageInfo)
from folo_core.entrypoints.openai.serving_engine import OpenAIServing, RequestState
from folo_core.outputs import CompletionOutput, SampleLogprobs


def completion_logprobs(logprobs: SampleLogprobs, text_offset: int) -> CompletionLogProbs:
    """OpenAI's legacy logprobs: per position the sampled token, its logprob and the top tokens."""
    result = CompletionLogProbs()
    for position in logprobs:
        sampled = next(iter(position.values()))  # the sampled token comes first
        token = sampled.decoded_token or ""
        result.tokens.append(token)
        result.token_logprobs.append(sampled.logprob)
        result.top_logprobs.append({lp.decoded_token or "": lp.logprob for lp in position.values()})
        result.text_offset.append(text_offset)
        text_offset += len(token)
    return result


class OpenAIServingCompletion(OpenAIServing[CompletionRequest]):
    request_id_prefix = "cmpl"

    def build_prompt(self, request: CompletionRequest) -> PromptType:
        if isinstance(request.prompt, str):
            return request.prompt
        return {"prompt_token_ids": request.prompt}

    @staticmethod
    def _choice(request: CompletionRequest, output: CompletionOutput, text_offset: int) -> CompletionResponseChoice:
        logprobs = completion_logprobs(output.logprobs or [], text_offset) if request.logprobs is not None else None
        return CompletionResponseChoice(index=output.index, text=output.text, logprobs=logprobs,
                                        finish_reason=output.finish_reason, stop_reason=output.stop_reason)

    def stream_chunks(self, request: CompletionRequest, state: RequestState,
                      delta: CompletionOutput) -> list[BaseModel]:
        if not (delta.text or delta.finish_reason or delta.logprobs):
            return []
        offset = len(state.choices[delta.index].text) - len(delta.text)
        return [self._response(state, [self._choice(request, delta, offset)])]

    def usage_chunk(self, state: RequestState) -> BaseModel:
        return self._response(state, [], state.usage())

    def full_response(self, request: CompletionRequest, state: RequestState) -> BaseModel:
        return self._response(state, [self._choice(request, choice, 0) for choice in state.choices], state.usage())

    @staticmethod
    def _response(state: RequestState, choices: list[CompletionResponseChoice],
                  usage: UsageInfo | None = None) -> CompletionResponse:
        return CompletionResponse(id=state.request_id, created=state.created, model=state.model, choices=choices,
                                  usage=usage)
