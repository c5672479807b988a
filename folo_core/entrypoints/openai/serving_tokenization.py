"""``POST /tokenize`` and ``/detokenize`` (vLLM's): the served tokenizer, with the server's checks."""

from __future__ import annotations

from folo_core.engine.async_llm import AsyncLLM
from folo_core.engine.chat_utils import check_unicode, render_chat
from folo_core.engine.errors import EngineDeadError
from folo_core.entrypoints.openai.errors import bad_request, model_not_found, shutting_down
from folo_core.entrypoints.openai.protocol import (DetokenizeRequest, DetokenizeResponse, TokenizeRequest,
                                                   TokenizeResponse)


class OpenAIServingTokenization:
    def __init__(self, engine: AsyncLLM, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.processor = engine.processor

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise model_not_found(model)

    def _tokenize(self, request: TokenizeRequest) -> list[int]:
        tokenizer = self.processor.tokenizer
        if request.messages is not None:
            prompt = render_chat(tokenizer, [m.to_template_message() for m in request.messages], None,
                                 request.add_generation_prompt, request.chat_template_kwargs,
                                 self.processor.max_prompt_chars)
            return prompt["prompt_token_ids"]
        self.processor.check_prompt_chars(request.prompt)
        check_unicode(request.prompt, "prompt")
        return tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens)

    def _detokenize(self, request: DetokenizeRequest) -> str:
        bad = [t for t in request.tokens if not 0 <= t < self.processor.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of vocabulary (size {self.processor.vocab_size})")
        return self.processor.tokenizer.decode(request.tokens)

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self._check_model(request.model)
        tokens = await self._run(self._tokenize, request)
        return TokenizeResponse(count=len(tokens), max_model_len=self.processor.max_model_len, tokens=tokens)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self._check_model(request.model)
        return DetokenizeResponse(prompt=await self._run(self._detokenize, request))

    async def _run(self, fn, request):
        try:
            return await self.engine.run_on_tokenizer_thread(fn, request)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        except EngineDeadError as exc:
            raise shutting_down(str(exc)) from None
