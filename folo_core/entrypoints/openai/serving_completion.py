"""``POST /v1/completions``: a text (or token-id) prompt in, text out; ``echo`` returns the prompt first."""

from __future__ import annotations

from pydantic import BaseModel

from folo_core.engine.processor import PromptType
from folo_core.entrypoints.openai.protocol import (CompletionLogProbs, CompletionRequest, CompletionResponse,
                                                   CompletionResponseChoice, UsageInfo)
from folo_core.entrypoints.openai.serving_engine import OpenAIServing, RequestState
from folo_core.outputs import CompletionOutput, SampleLogprobs


def completion_logprobs(logprobs: SampleLogprobs, text_offset: int,
                        result: CompletionLogProbs | None = None) -> CompletionLogProbs:
    """OpenAI's legacy logprobs: per position the sampled token, its logprob and the top tokens."""
    result = result or CompletionLogProbs()
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

    def _prompt_text(self, state: RequestState) -> str:
        return state.prompt if state.prompt is not None else self.tokenizer.decode(state.prompt_token_ids)

    def _echo_logprobs(self, state: RequestState) -> CompletionLogProbs:
        """The prompt's positions: the first token has no logprob (nothing comes before it)."""
        result = CompletionLogProbs()
        offset = 0
        for token_id, position in zip(state.prompt_token_ids, state.prompt_logprobs or []):
            token = self.tokenizer.decode([token_id])
            result.tokens.append(token)
            result.text_offset.append(offset)
            if position is None:
                result.token_logprobs.append(None)
                result.top_logprobs.append(None)
            else:
                result.token_logprobs.append(position[token_id].logprob)
                result.top_logprobs.append({lp.decoded_token or "": lp.logprob for lp in position.values()})
            offset += len(token)
        return result

    def _choice(self, request: CompletionRequest, state: RequestState, output: CompletionOutput,
                text_offset: int, echo: bool) -> CompletionResponseChoice:
        """One choice; with ``echo``, the prompt's text (and logprobs) come first."""
        prefix = self._prompt_text(state) if echo else ""
        logprobs = None
        if request.logprobs is not None:
            logprobs = completion_logprobs(output.logprobs or [], text_offset + len(prefix),
                                           self._echo_logprobs(state) if echo else None)
        return CompletionResponseChoice(index=output.index, text=prefix + output.text, logprobs=logprobs,
                                        finish_reason=output.finish_reason, stop_reason=output.stop_reason)

    def stream_chunks(self, request: CompletionRequest, state: RequestState,
                      delta: CompletionOutput) -> list[BaseModel]:
        first = len(state.choices[delta.index].token_ids) == len(delta.token_ids)
        if not (delta.text or delta.finish_reason or delta.logprobs or (first and request.echo)):
            return []
        offset = len(state.choices[delta.index].text) - len(delta.text)
        if request.echo and not first:
            offset += len(self._prompt_text(state))
        return [self._response(state, [self._choice(request, state, delta, offset, request.echo and first)])]

    def usage_chunk(self, state: RequestState) -> BaseModel:
        return self._response(state, [], state.usage())

    def full_response(self, request: CompletionRequest, state: RequestState) -> BaseModel:
        return self._response(state, [self._choice(request, state, choice, 0, request.echo)
                                      for choice in state.choices], state.usage())

    @staticmethod
    def _response(state: RequestState, choices: list[CompletionResponseChoice],
                  usage: UsageInfo | None = None) -> CompletionResponse:
        return CompletionResponse(id=state.request_id, created=state.created, model=state.model, choices=choices,
                                  usage=usage)
