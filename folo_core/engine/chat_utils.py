"""Chat conversations -> prompts with the tokenizer's chat template (shared by ``LLM.chat`` and the server)."""

from __future__ import annotations

from typing import Any

ChatMessage = dict[str, Any]


def render_chat(tokenizer: Any, conversation: list[ChatMessage], chat_template: str | None = None,
                add_generation_prompt: bool = True,
                chat_template_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"prompt": text, "prompt_token_ids": ids}`` for one conversation."""
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer (skip_tokenizer_init=True was set)")
    text = tokenizer.apply_chat_template(conversation, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         **(chat_template_kwargs or {}))
    # The template already wrote the special tokens; do not add BOS again.
    return {"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}
