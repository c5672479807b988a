"""``POST /v1/chat/completions``: messages rendered with the tokenizer's chat template."""

from __future__ import annotations

from pydantic import BaseModel

from folo_core.engine.async_llm import AsyncLLM
from folo_core.engine.chat_utils import render_chat
from folo_core.engine.processor import PromptType
from folo_core.entrypoints.openai.protocol import (ChatCompletionLogProb, ChatCompletionLogProbs,
                                                   ChatCompletionLogProbsContent, ChatCompletionRequest,
                                                   ChatCompletionResponse, ChatCompletionResponseChoice,
                                                   ChatCompletionResponseStreamChoice,
                                                   ChatCompletionStreamResponse, ChatMessage, DeltaMessage,
                                                   UsageInfo)
from folo_core.entrypoints.openai.serving_engine import OpenAIServing, RequestState
from folo_core.outputs import CompletionOutput, Logprob, SampleLogprobs

_ROLE = "assistant"


def _chat_logprob(logprob: Logprob) -> ChatCompletionLogProb:
    token = logprob.decoded_token or ""
    return ChatCompletionLogProb(token=token, logprob=logprob.logprob, bytes=list(token.encode()))


def chat_logprobs(logprobs: SampleLogprobs, top_logprobs: int) -> ChatCompletionLogProbs:
    """Per position the sampled token and the ``top_logprobs`` most likely ones."""
    content = []
    for position in logprobs:
        sampled = _chat_logprob(next(iter(position.values())))  # the sampled token comes first
        top = sorted(position.values(), key=lambda lp: lp.rank or 0)[:top_logprobs]
        content.append(ChatCompletionLogProbsContent(**sampled.model_dump(),
                                                     top_logprobs=[_chat_logprob(lp) for lp in top]))
    return ChatCompletionLogProbs(content=content)


class OpenAIServingChat(OpenAIServing[ChatCompletionRequest]):
    request_id_prefix = "chatcmpl"

    def __init__(self, engine: AsyncLLM, model_name: str, trust_request_chat_template: bool = False) -> None:
        super().__init__(engine, model_name)
        self.trust_request_chat_template = trust_request_chat_template

    def build_prompt(self, request: ChatCompletionRequest) -> PromptType:
        """Render and tokenize (on the tokenizer thread); a request's own template runs only if
        the server trusts them: a template is code, and can loop or allocate without bound."""
        if request.chat_template is not None and not self.trust_request_chat_template:
            raise ValueError("chat_template is passed with the request, but the server was not started with "
                             "--trust-request-chat-template: refused the untrusted chat template")
        return render_chat(self.tokenizer, request.conversation(), request.chat_template,
                           request.add_generation_prompt, request.chat_template_kwargs,
                           self.engine.engine.processor.max_prompt_chars)

    def _logprobs(self, request: ChatCompletionRequest, logprobs: SampleLogprobs) -> ChatCompletionLogProbs | None:
        return chat_logprobs(logprobs, request.top_logprobs or 0) if request.logprobs else None

    def _chunk(self, state: RequestState, choices: list[ChatCompletionResponseStreamChoice],
               usage: UsageInfo | None = None) -> BaseModel:
        return ChatCompletionStreamResponse(id=state.request_id, created=state.created, model=state.model,
                                            choices=choices, usage=usage)

    def stream_chunks(self, request: ChatCompletionRequest, state: RequestState,
                      delta: CompletionOutput) -> list[BaseModel]:
        chunks = []
        if len(state.choices[delta.index].token_ids) == len(delta.token_ids):  # its first output: the role
            chunks.append(self._chunk(state, [ChatCompletionResponseStreamChoice(
                index=delta.index, delta=DeltaMessage(role=_ROLE, content=""))]))
        if delta.text or delta.finish_reason or delta.logprobs:
            chunks.append(self._chunk(state, [ChatCompletionResponseStreamChoice(
                index=delta.index, delta=DeltaMessage(content=delta.text),
                logprobs=self._logprobs(request, delta.logprobs or []),
                finish_reason=delta.finish_reason, stop_reason=delta.stop_reason)]))
        return chunks

    def usage_chunk(self, state: RequestState) -> BaseModel:
        return self._chunk(state, [], state.usage())

    def full_response(self, request: ChatCompletionRequest, state: RequestState) -> BaseModel:
        choices = [ChatCompletionResponseChoice(
            index=choice.index, message=ChatMessage(role=_ROLE, content=choice.text),
            logprobs=self._logprobs(request, choice.logprobs), finish_reason=choice.finish_reason,
            stop_reason=choice.stop_reason) for choice in state.choices]
        return ChatCompletionResponse(id=state.request_id, created=state.created, model=state.model,
                                      choices=choices, usage=state.usage())
