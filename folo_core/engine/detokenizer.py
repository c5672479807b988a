"""Incremental detokenization with stop strings.

Built on tokenizers' ``DecodeStream``, which holds back bytes until they form
whole UTF-8 characters. While a request runs, the last ``len(longest stop) - 1``
characters are withheld from streamed text, so a stop string split across
chunks never leaks out.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

from folo_core.sampling_params import SamplingParams

_PRIME_TOKENS = 8  # prompt tail that fixes the spacing of the first output token


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.stream = DecodeStream(ids=list(prompt_token_ids[-_PRIME_TOKENS:]),
                                   skip_special_tokens=params.skip_special_tokens)
        self.stop = params.stop
        self.include_stop = params.include_stop_str_in_output
        self.stop_buffer_length = 0 if self.include_stop or not self.stop else max(map(len, self.stop)) - 1
        self.output_text = ""
        self._sent = 0

    def update(self, new_token_ids: list[int], stop_terminated: bool) -> tuple[str | None, int]:
        """Decode new tokens; returns the stop string that ended the text, if one did, and how
        many of the tokens were used: a step may bring several (kept draft tokens), and those
        after the one that completed a stop string are not part of the output.

        ``stop_terminated``: the last token is an EOS/stop token and is not shown.
        """
        shown = new_token_ids[:-1] if stop_terminated and not self.include_stop else new_token_ids
        for used, token_id in enumerate(shown, start=1):
            piece = self.stream.step(self.backend, token_id)
            if not piece:
                continue
            self.output_text += piece
            if self.stop:
                stop = self._check_stop_strings(len(piece))
                if stop is not None:
                    return stop, used
        return None, len(new_token_ids)

    def _check_stop_strings(self, new_chars: int) -> str | None:
        for stop in self.stop:
            # Only text that the new characters could complete needs searching.
            start = max(0, len(self.output_text) - new_chars - len(stop) + 1)
            index = self.output_text.find(stop, start)
            if index != -1:
                end = index + len(stop) if self.include_stop else index
                self.output_text = self.output_text[:end]
                return stop
        return None

    def get_next_output_text(self, finished: bool, delta: bool) -> str:
        """All text so far (or only the new part with ``delta``), minus the stop buffer."""
        length = len(self.output_text) if finished else max(len(self.output_text) - self.stop_buffer_length, 0)
        if not delta:
            return self.output_text[:length]
        start, self._sent = self._sent, max(self._sent, length)
        return self.output_text[start:length]
