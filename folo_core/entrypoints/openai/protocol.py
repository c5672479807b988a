"""OpenAI API request and response models (the subset Folo serves), with vLLM's extras.

Unknown request fields are logged and ignored, as vLLM does, so clients that
send newer OpenAI fields keep working; fields Folo knows but cannot honour
(``echo``, ``best_of``, tools, ...) are rejected with a 400 that names them.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from folo_core.logger import init_logger
from folo_core.utils import lone_surrogate_at
from folo_core.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

logger = init_logger(__name__)

MAX_LOGPROBS = 20  # vLLM's default max_logprobs


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _RequestModel(OpenAIBaseModel):
    @model_validator(mode="before")
    @classmethod
    def _log_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                logger.warning("ignoring unknown request field(s) of %s: %s", cls.__name__, ", ".join(unknown))
        return data

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        """JSON may escape a lone surrogate (``"\\ud800"``); no tokenizer or response can take one."""
        path = _lone_surrogate(data, [])
        if path is not None:
            raise ValueError(f"{'.'.join(path) or 'the body'} contains a lone surrogate (invalid Unicode)")
        return data


def _lone_surrogate(value: Any, path: list[str]) -> list[str] | None:
    """The path to the first string holding a lone surrogate, if any."""
    if isinstance(value, str):
        return None if lone_surrogate_at(value) is None else path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(key, path + [str(key)]) if isinstance(key, str) else None
        found = found or _lone_surrogate(item, path + [str(key)])
        if found is not None:
            return found
    return None


def _unsupported(value: Any, field: str, why: str) -> None:
    if value:
        raise ValueError(f"{field} is not supported: {why}")


# ----- errors and shared pieces -----


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "folo"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----- requests -----


class JsonSchemaFormat(OpenAIBaseModel):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format of type json_schema needs json_schema.schema")
        return self

    def structured_outputs(self) -> StructuredOutputsParams | None:
        if self.type == "json_object":
            return StructuredOutputsParams(json_object=True)
        if self.type == "json_schema":
            schema = self.json_schema.schema_
            return StructuredOutputsParams(json=_closed_objects(schema) if self.json_schema.strict else schema)
        return None


def _closed_objects(schema: Any) -> Any:
    """OpenAI's strict mode: an object schema without ``additionalProperties`` allows none."""
    if isinstance(schema, list):
        return [_closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed_objects(value) for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


class SamplingRequest(_RequestModel):
    """Fields completions and chat share; ``to_sampling_params`` maps them onto the engine's names."""

    model: str | None = None  # None: the served model
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=128)  # OpenAI's limit; each choice is a request
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extras
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    response_format: ResponseFormat | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    structured_outputs: dict[str, Any] | None = None  # StructuredOutputsParams' fields
    # vLLM's legacy names for the same, mapped onto structured_outputs (never ignored)
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias and not all(key.isdigit() for key in bias):
            raise ValueError("logit_bias keys must be token ids (strings of digits)")
        return bias

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if stop is not None and not all(isinstance(s, str) and s for s in ([stop] if isinstance(stop, str) else stop)):
            raise ValueError("stop strings must be non-empty")
        return stop

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, options: StreamOptions | None, info: Any) -> StreamOptions | None:
        if options is not None and not info.data.get("stream"):
            raise ValueError("stream_options can only be set when stream is true")
        return options

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def output_max_tokens(self) -> int | None:
        raise NotImplementedError

    def num_logprobs(self) -> int | None:
        raise NotImplementedError

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        """The one output constraint the request asks for, whichever field names it."""
        given: list[tuple[str, StructuredOutputsParams]] = []
        if self.structured_outputs is not None:
            if not isinstance(self.structured_outputs, dict):
                raise ValueError("structured_outputs must be an object")
            known = {f.name for f in dataclasses.fields(StructuredOutputsParams)}
            unknown = sorted(set(self.structured_outputs) - known)
            if unknown:
                raise ValueError(f"structured_outputs: unknown field(s) {', '.join(unknown)}")
            given.append(("structured_outputs", StructuredOutputsParams(**self.structured_outputs)))
        for field, kind in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                            ("guided_grammar", "grammar")):
            value = getattr(self, field)
            if value is not None:
                given.append((field, StructuredOutputsParams(**{kind: value})))
        from_format = self.response_format.structured_outputs() if self.response_format is not None else None
        if from_format is not None:
            given.append(("response_format", from_format))
        if len(given) > 1:
            raise ValueError(f"set only one output constraint; got {', '.join(name for name, _ in given)}")
        return given[0][1] if given else None

    def to_sampling_params(self) -> SamplingParams:
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return SamplingParams(
            n=pick(self.n, 1),
            temperature=pick(self.temperature, 1.0),
            top_p=pick(self.top_p, 1.0),
            top_k=pick(self.top_k, 0),
            min_p=pick(self.min_p, 0.0),
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            presence_penalty=pick(self.presence_penalty, 0.0),
            frequency_penalty=pick(self.frequency_penalty, 0.0),
            repetition_penalty=pick(self.repetition_penalty, 1.0),
            ignore_eos=self.ignore_eos,
            max_tokens=self.output_max_tokens(),
            min_tokens=self.min_tokens,
            logprobs=self.num_logprobs(),
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=self.structured_outputs_params(),
            logit_bias={int(token): bias for token, bias in self.logit_bias.items()} if self.logit_bias else None,
            allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words,
        )


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's and vLLM's default for completions
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False  # the prompt comes back before the completion (with its logprobs, given logprobs)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # vLLM extra
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str | list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError("only one prompt per request is supported")
            prompt = prompt[0]
        if not prompt:
            raise ValueError("the prompt must not be empty")
        return prompt

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: Any, info: Any) -> Any:
        _unsupported(value, info.field_name, "not implemented")
        return value

    def to_sampling_params(self) -> SamplingParams:
        params = super().to_sampling_params()
        if self.prompt_logprobs is not None:
            params.prompt_logprobs = self.prompt_logprobs
        elif self.echo and self.logprobs is not None:  # the echoed prompt carries logprobs too
            params.prompt_logprobs = self.logprobs
        return params

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, best_of: int | None) -> int | None:
        _unsupported(best_of is not None and best_of > 1, "best_of > 1", "only one sequence is generated")
        return best_of

    def output_max_tokens(self) -> int | None:
        return self.max_tokens

    def num_logprobs(self) -> int | None:
        return self.logprobs


class TextContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatCompletionToolsParam(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIBaseModel):
    name: str


class ChatCompletionNamedToolChoiceParam(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatMessageParam(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message answers this call

    def to_template_message(self) -> dict[str, Any]:
        """The message for ``render_chat`` (which joins text parts into one string)."""
        return self.model_dump(exclude_none=True)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessageParam] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[ChatCompletionToolsParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | ChatCompletionNamedToolChoiceParam | None = None
    # vLLM extras
    add_generation_prompt: bool = True
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> "ChatCompletionRequest":
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, ChatCompletionNamedToolChoiceParam) and \
                choice.function.name not in {t.function.name for t in self.tools}:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not in tools")
        return self

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The tools as chat templates take them."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top_logprobs: int | None, info: Any) -> int | None:
        if top_logprobs and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs to be true")
        return top_logprobs

    def output_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def conversation(self) -> list[dict[str, Any]]:
        return [message.to_template_message() for message in self.messages]


# ----- responses -----


class _Choice(OpenAIBaseModel):
    """What every choice carries besides its text."""

    index: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM extra: the stop string or token id that ended it


class _Response(OpenAIBaseModel):
    id: str
    created: int
    model: str


class CompletionLogProbs(OpenAIBaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionResponseChoice(_Choice):
    text: str
    logprobs: CompletionLogProbs | None = None


class CompletionResponse(_Response):
    """A whole completion, or (``stream``) one chunk of it; OpenAI uses one object type for both."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionResponseChoice]
    usage: UsageInfo | None = None


class ChatCompletionLogProb(OpenAIBaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatCompletionLogProbsContent(ChatCompletionLogProb):
    top_logprobs: list[ChatCompletionLogProb] = Field(default_factory=list)


class ChatCompletionLogProbs(OpenAIBaseModel):
    content: list[ChatCompletionLogProbsContent] | None = None


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ChatCompletionResponseChoice(_Choice):
    message: ChatMessage
    logprobs: ChatCompletionLogProbs | None = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo


class DeltaFunctionCall(OpenAIBaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(OpenAIBaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(OpenAIBaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatCompletionResponseStreamChoice(_Choice):
    delta: DeltaMessage
    logprobs: ChatCompletionLogProbs | None = None


class ChatCompletionStreamResponse(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = None


# ----- tokenizer endpoints (vLLM's /tokenize, /detokenize) -----


class TokenizeRequest(_RequestModel):
    """Either ``prompt`` (with ``add_special_tokens``) or chat ``messages`` (rendered with the template)."""

    model: str | None = None
    prompt: str | None = None
    add_special_tokens: bool = True
    messages: list[ChatMessageParam] | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(_RequestModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str


class VersionResponse(OpenAIBaseModel):
    version: str
