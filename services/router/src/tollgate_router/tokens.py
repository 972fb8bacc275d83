"""Counting tokens the provider did not report.

Some OpenAI-compatible servers (llama.cpp's server, older vLLM, some Ollama versions, proxies
that drop ``stream_options``) send no usage at all. The router then counts the request and the
answer itself, with the tokenizer the catalog names for the model (a Hugging Face
``tokenizer.json`` shipped beside the catalog), or else with the documented estimate of
:func:`estimate_tokens`; the usage and log records say the figures are estimated.

A chat prompt is more than its text: a chat template wraps every message in a few special
tokens. The count adds :data:`MESSAGE_OVERHEAD` tokens a message, OpenAI's published figure
for its chat models; templates differ by a few tokens a message either way.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

from tollgate_core.errors import ConfigurationError

#: tokens a chat template adds around each message (and once to prime the reply)
MESSAGE_OVERHEAD = 3


def estimate_tokens(text: str) -> int:
    """About four characters a token and at least one a word: the usual rule of thumb for
    English with BPE tokenizers (within ~20% on prose; code and other scripts vary more)."""
    return max(len(text.split()), math.ceil(len(text) / 4)) if text else 0


class TokenCounter(Protocol):
    #: what records and logs call this way of counting
    name: str

    def count(self, text: str) -> int: ...


class EstimateCounter:
    name = "estimate"

    def count(self, text: str) -> int:
        return estimate_tokens(text)


class HuggingFaceCounter:
    """A real tokenizer, loaded offline from a ``tokenizer.json`` file."""

    def __init__(self, path: Path) -> None:
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception for a bad file
            raise ConfigurationError(f"cannot load tokenizer {path}: {exc}") from exc
        self.name = f"tokenizer:{path.name}"

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


class TokenCounters:
    """One counter per tokenizer file, loaded once; a relative path is taken from
    ``base_dir`` (the catalog file's folder)."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self._base = base_dir or Path.cwd()
        self._loaded: dict[Path, TokenCounter] = {}
        self._lock = threading.Lock()
        self.estimate: TokenCounter = EstimateCounter()

    def get(self, tokenizer: str | None) -> TokenCounter:
        """The counter for a catalog's ``tokenizer`` entry (None: the estimate); raises
        ConfigurationError when the file cannot be loaded."""
        if tokenizer is None:
            return self.estimate
        path = (self._base / tokenizer).resolve()
        with self._lock:
            counter = self._loaded.get(path)
            if counter is None:
                counter = self._loaded[path] = HuggingFaceCounter(path)
        return counter

    def load_all(self, tokenizers: Iterable[str | None]) -> None:
        """Load every named tokenizer now, so a catalog naming a missing or bad file is
        refused when it is loaded, not when a provider first omits its usage."""
        for tokenizer in tokenizers:
            self.get(tokenizer)


def count_chat(counter: TokenCounter, system: Iterable[str], messages: Iterable[str]) -> int:
    """Input tokens of a chat prompt: its texts plus the template's overhead."""
    texts = [*system, *messages]
    return sum(counter.count(t) for t in texts) + MESSAGE_OVERHEAD * (len(texts) + 1)
