"""``POST /tokenize`` and ``/detokenize`` (vLLM's): the served tokenizer, with the server's checks."""

from __future__ import annotations

from folo_core.engine.async_llm import AsyncLLM
from folo_core.engine.chat_utils import render_chat
from folo_core.entrypoints.openai.protocol import (DetokenizeRequest, DetokenizeResponse, TokenizeRequest,
                                                   TokenizeResponse)
from folo_core.entrypoints.openai.serving_engine import check_model, on_tokenizer_thread


class OpenAIServingTokenization:
    def __init__(self, engine: AsyncLLM, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.processor = engine.processor

    def _tokenize(self, request: TokenizeRequest) -> list[int]:
        if request.messages is not None:
            prompt = render_chat(self.processor.tokenizer, [m.to_template_message() for m in request.messages], None,
                                 request.add_generation_prompt, request.chat_template_kwargs,
                                 self.processor.max_prompt_chars)
            return prompt["prompt_token_ids"]
        return self.processor.encode_text(request.prompt, request.add_special_tokens)

    def _detokenize(self, request: DetokenizeRequest) -> str:
        self.processor.check_token_ids(request.tokens)
        return self.processor.tokenizer.decode(request.tokens)

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        check_model(request.model, self.model_name)
        tokens = await on_tokenizer_thread(self.engine, self._tokenize, request)
        return TokenizeResponse(count=len(tokens), max_model_len=self.processor.max_model_len, tokens=tokens)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        check_model(request.model, self.model_name)
        return DetokenizeResponse(prompt=await on_tokenizer_thread(self.engine, self._detokenize, request))
