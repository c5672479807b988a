"""Chat conversations -> prompts with the tokenizer's chat template (shared by ``LLM.chat`` and the server)."""

from __future__ import annotations

import json
from typing import Any

from jinja2 import TemplateError

from folo_core.utils import lone_surrogate_at

ChatMessage = dict[str, Any]

# ``apply_chat_template``'s own parameters: ``chat_template_kwargs`` only adds template variables.
_RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "chat_template", "tokenize", "add_generation_prompt", "continue_final_message",
    "return_dict", "return_tensors", "return_assistant_tokens_mask", "padding", "truncation", "max_length",
    "tokenizer_kwargs", "tools", "documents"})


def message_text(content: Any) -> str:
    """A message's content as one string: OpenAI's text parts are joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise ValueError("message content must be a string or a list of {'type': 'text', 'text': str} parts")


def _template_message(message: Any) -> ChatMessage:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ValueError(f"each chat message must be a dict with a string 'role', got {message!r:.80}")
    out = {**message, "content": message_text(message.get("content"))}
    if message.get("tool_calls"):  # OpenAI sends arguments as JSON text; templates want the object
        out["tool_calls"] = [_with_parsed_arguments(call) for call in message["tool_calls"]]
    return out


def _with_parsed_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except json.JSONDecodeError:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def _check_template_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = kwargs or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError("chat_template_kwargs must be an object with string keys")
    reserved = sorted(_RESERVED_TEMPLATE_KWARGS & kwargs.keys())
    if reserved:
        raise ValueError(f"chat_template_kwargs may not set {', '.join(reserved)}")
    return kwargs


def render_chat(tokenizer: Any, conversation: list[ChatMessage], chat_template: str | None = None,
                add_generation_prompt: bool = True, chat_template_kwargs: dict[str, Any] | None = None,
                max_chars: int | None = None, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``{"prompt": text, "prompt_token_ids": ids}`` for one conversation.

    ``max_chars`` (the processor's cap) refuses a conversation too long to fit before
    it is rendered, and the rendered text before it is tokenized. ``tools`` (OpenAI's
    function definitions) go to the template, which shows them to the model. Any
    mistake in the messages or kwargs is a ``ValueError`` that names it.
    """
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer (skip_tokenizer_init=True was set)")
    messages = [_template_message(m) for m in conversation]
    kwargs = _check_template_kwargs(chat_template_kwargs)
    if max_chars is not None and sum(len(m["content"]) for m in messages) > max_chars:
        raise ValueError(f"The messages have more than {max_chars} characters, more than can fit the maximum "
                         "model length")
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)
    except (TemplateError, TypeError) as exc:  # e.g. the template's raise_exception("roles must alternate")
        raise ValueError(f"cannot apply the chat template to messages: {exc}") from None
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(f"The rendered chat prompt has {len(text)} characters; no text longer than {max_chars} "
                         "characters can fit the maximum model length")
    check_unicode(text, "chat prompt")
    # The template already wrote the special tokens; do not add BOS again.
    return {"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}


def check_unicode(text: str, what: str) -> None:
    """Refuse text a tokenizer cannot take: a lone surrogate (e.g. from a JSON ``\\ud800`` escape)."""
    position = lone_surrogate_at(text)
    if position is not None:
        raise ValueError(f"The {what} is not valid Unicode: a lone surrogate at position {position}")
