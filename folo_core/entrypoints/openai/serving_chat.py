"""``POST /v1/chat/completions``: messages rendered with the tokenizer's chat template, tool calls
(``tool_calls.py``) read back out of the output."""

from __future__ import annotations

from pydantic import BaseModel

from folo_core.engine.async_llm import AsyncLLM
from folo_core.engine.chat_utils import render_chat
from folo_core.engine.processor import PromptType
from folo_core.entrypoints.openai.protocol import (ChatCompletionLogProb, ChatCompletionLogProbs,
                                                   ChatCompletionLogProbsContent, ChatCompletionRequest,
                                                   ChatCompletionResponse, ChatCompletionResponseChoice,
                                                   ChatCompletionResponseStreamChoice,
                                                   ChatCompletionStreamResponse, ChatMessage, DeltaFunctionCall,
                                                   DeltaMessage, DeltaToolCall, FunctionCall, ToolCall, UsageInfo)
from folo_core.entrypoints.openai.serving_engine import OpenAIServing, RequestState
from folo_core.entrypoints.openai.tool_calls import (AUTO, NAMED, REQUIRED, forced_call_constraint, forced_calls,
                                                     tool_choice_mode)
from folo_core.outputs import CompletionOutput, Logprob, SampleLogprobs
from folo_core.sampling_params import SamplingParams
from folo_core.tool_parsers import ToolParser

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

    def __init__(self, engine: AsyncLLM, model_name: str, trust_request_chat_template: bool = False,
                 tool_parser: ToolParser | None = None, enable_auto_tool_choice: bool = False) -> None:
        super().__init__(engine, model_name)
        self.trust_request_chat_template = trust_request_chat_template
        self.tool_parser = tool_parser
        self.enable_auto_tool_choice = enable_auto_tool_choice

    def _mode(self, request: ChatCompletionRequest) -> str | None:
        return tool_choice_mode(request, self.tool_parser, self.enable_auto_tool_choice)

    def sampling_params(self, request: ChatCompletionRequest) -> SamplingParams:
        params = request.to_sampling_params()
        mode = self._mode(request)
        if mode in (NAMED, REQUIRED):
            if params.structured_outputs is not None:
                raise ValueError(f"tool_choice={request.tool_choice!r} already constrains the output; "
                                 "drop response_format / structured_outputs")
            params.structured_outputs = forced_call_constraint(request, mode)
        return params

    def build_prompt(self, request: ChatCompletionRequest) -> PromptType:
        """Render and tokenize (on the tokenizer thread); a request's own template runs only if
        the server trusts them: a template is code, and can loop or allocate without bound."""
        if request.chat_template is not None and not self.trust_request_chat_template:
            raise ValueError("chat_template is passed with the request, but the server was not started with "
                             "--trust-request-chat-template: refused the untrusted chat template")
        tools = request.tool_dicts() if request.tool_choice != "none" else None
        return render_chat(self.tokenizer, request.conversation(), request.chat_template,
                           request.add_generation_prompt, request.chat_template_kwargs,
                           self.engine.processor.max_prompt_chars, tools)

    def _logprobs(self, request: ChatCompletionRequest, logprobs: SampleLogprobs) -> ChatCompletionLogProbs | None:
        return chat_logprobs(logprobs, request.top_logprobs or 0) if request.logprobs else None

    def _chunk(self, state: RequestState, choices: list[ChatCompletionResponseStreamChoice],
               usage: UsageInfo | None = None) -> BaseModel:
        return ChatCompletionStreamResponse(id=state.request_id, created=state.created, model=state.model,
                                            choices=choices, usage=usage)

    def _message(self, request: ChatCompletionRequest, choice: CompletionOutput) -> tuple[ChatMessage, str | None]:
        """A finished choice as a message: its content and tool calls, and its finish reason."""
        mode = self._mode(request)
        if mode in (NAMED, REQUIRED) and choice.finish_reason == "stop":
            calls = forced_calls(request, mode, choice.text)
            return ChatMessage(role=_ROLE, content=None, tool_calls=calls), \
                "stop" if mode == NAMED else "tool_calls"  # OpenAI: a forced named call ends with "stop"
        if mode == AUTO and choice.finish_reason in ("stop", "length"):
            extracted = self.tool_parser.extract_tool_calls(choice.text)
            if extracted.tools_called:
                calls = [ToolCall(function=FunctionCall(name=c.name, arguments=c.arguments))
                         for c in extracted.tool_calls]
                return ChatMessage(role=_ROLE, content=extracted.content, tool_calls=calls), "tool_calls"
        return ChatMessage(role=_ROLE, content=choice.text), choice.finish_reason

    def stream_chunks(self, request: ChatCompletionRequest, state: RequestState,
                      delta: CompletionOutput) -> list[BaseModel]:
        chunks = []
        index = delta.index
        choice = state.choices[index]
        if len(choice.token_ids) == len(delta.token_ids):  # its first output: the role
            chunks.append(self._chunk(state, [ChatCompletionResponseStreamChoice(
                index=index, delta=DeltaMessage(role=_ROLE, content=""))]))
        mode = self._mode(request)
        if delta.finish_reason is not None and mode is not None:
            message, finish_reason = self._message(request, choice)
            if message.tool_calls:  # the held-back text became calls
                sent = choice.text[:state.streamed_chars[index]]
                content = (message.content or "")[len(sent):] if mode == AUTO else None
                chunks.append(self._chunk(state, [ChatCompletionResponseStreamChoice(
                    index=index, delta=DeltaMessage(content=content or None, tool_calls=[
                        DeltaToolCall(index=i, id=call.id, type="function",
                                      function=DeltaFunctionCall(name=call.function.name,
                                                                 arguments=call.function.arguments))
                        for i, call in enumerate(message.tool_calls)]),
                    finish_reason=finish_reason, stop_reason=delta.stop_reason)]))
                return chunks
        text = self._streamable_text(mode, state, index, delta.finish_reason is not None)
        if text or delta.finish_reason or delta.logprobs:
            chunks.append(self._chunk(state, [ChatCompletionResponseStreamChoice(
                index=index, delta=DeltaMessage(content=text),
                logprobs=self._logprobs(request, delta.logprobs or []),
                finish_reason=delta.finish_reason, stop_reason=delta.stop_reason)]))
        return chunks

    def _streamable_text(self, mode: str | None, state: RequestState, index: int, finished: bool) -> str:
        """New text that may go out now: all of it, except what could be the start of a tool call
        (``auto``) or is a forced call being written (``named``/``required``), until the end."""
        text = state.choices[index].text
        if mode in (NAMED, REQUIRED) and not finished:
            return ""
        end = len(text)
        if mode == AUTO and not finished:
            hold = self.tool_parser.may_start_call(text)
            end = len(text) if hold is None else hold
        end = max(end, state.streamed_chars[index])
        new, state.streamed_chars[index] = text[state.streamed_chars[index]:end], end
        return new

    def usage_chunk(self, state: RequestState) -> BaseModel:
        return self._chunk(state, [], state.usage())

    def full_response(self, request: ChatCompletionRequest, state: RequestState) -> BaseModel:
        choices = []
        for choice in state.choices:
            message, finish_reason = self._message(request, choice)
            choices.append(ChatCompletionResponseChoice(
                index=choice.index, message=message, logprobs=self._logprobs(request, choice.logprobs),
                finish_reason=finish_reason, stop_reason=choice.stop_reason))
        return ChatCompletionResponse(id=state.request_id, created=state.created, model=state.model,
                                      choices=choices, usage=state.usage())
