"""Incremental detokenization: text to print as each new token arrives (terminal chat, server streams).

A token can end in the middle of a UTF-8 character (byte-level BPE, SentencePiece byte fallback), so
the text of the tokens so far is decoded and a trailing U+FFFD (an incomplete character) is held back
until the next token completes it; what was already emitted is never changed.

    dec = StreamDecoder(chat)
    for tok in stream(model, ids, 100):
        print(dec.push(tok), end="", flush=True)
    print(dec.flush())
"""

from __future__ import annotations


class StreamDecoder:
    def __init__(self, tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer  # a ChatTokenizer (decode(ids, skip_special)) or a plain tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already returned

    def _text(self) -> str:
        try:
            return self.tokenizer.decode(self.ids, skip_special=self.skip_special)
        except TypeError:  # a plain tokenizer: decode(ids)
            return self.tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        """The new text that `token` completes ("" while a character is still incomplete)."""
        self.ids.append(token)
        text = self._text()
        end = len(text)
        while end > self.emitted and text[end - 1] == "\ufffd":  # possibly an incomplete character: wait
            end -= 1
        out = text[self.emitted : end]
        self.emitted = end
        return out

    def flush(self) -> str:
        """What is left (a trailing U+FFFD that no token completed is emitted as it is)."""
        text = self._text()
        out = text[self.emitted :]
        self.emitted = len(text)
        return out
