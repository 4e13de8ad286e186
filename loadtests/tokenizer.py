"""The target model's tokenizer, used to measure prompts in model tokens.

Workloads and accuracy tasks are sized in the served model's tokens, so the
harness loads that model's Hugging Face tokenizer from a local folder (no
downloads). For the chat endpoint the chat template is counted too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_MODELS_DIR = Path("~/.cache/sparse-serve/models").expanduser()


class PromptTokenizer:
    """Counts, encodes and decodes text in the target model's tokens."""

    def __init__(self, hf_tokenizer: Any, source: str) -> None:
        self._tok = hf_tokenizer
        self.source = source
        self._chat_overhead: int | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` (special tokens dropped)."""
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def count(self, text: str) -> int:
        """Number of tokens in `text` (no special tokens, no template)."""
        return len(self.encode(text))

    @property
    def vocab_size(self) -> int:
        return int(len(self._tok))

    @property
    def special_ids(self) -> set[int]:
        return set(int(i) for i in self._tok.all_special_ids)

    def chat_overhead(self) -> int:
        """Tokens the chat template adds around one user message."""
        if self._chat_overhead is None:
            if getattr(self._tok, "chat_template", None) is None:
                self._chat_overhead = 0
            else:
                probe = "x"
                ids = self._tok.apply_chat_template(
                    [{"role": "user", "content": probe}], add_generation_prompt=True, tokenize=True
                )
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                self._chat_overhead = len(ids) - self.count(probe)
        return self._chat_overhead

    def count_prompt(self, text: str, endpoint: str) -> int:
        """Prompt tokens the server will see for `text` on `endpoint`."""
        extra = self.chat_overhead() if endpoint == "chat" else 0
        bos = getattr(self._tok, "bos_token_id", None)
        add_bos = endpoint == "completions" and bos is not None and self._adds_bos()
        return self.count(text) + extra + int(add_bos)

    def _adds_bos(self) -> bool:
        ids = self._tok.encode("x", add_special_tokens=True)
        return bool(ids) and ids[0] == self._tok.bos_token_id


def load_tokenizer(path: str | None, model: str | None) -> PromptTokenizer:
    """Load the tokenizer from `path`, else from DEFAULT_MODELS_DIR/<model>.

    Raises ValueError with a hint when no local tokenizer folder exists.
    """
    candidates = [Path(path).expanduser()] if path else []
    if not path and model:
        candidates.append(DEFAULT_MODELS_DIR / model)
    for folder in candidates:
        if folder.is_dir():
            from transformers import AutoTokenizer

            return PromptTokenizer(AutoTokenizer.from_pretrained(str(folder)), str(folder))
    where = ", ".join(str(c) for c in candidates) or "(no model id known)"
    raise ValueError(
        f"no local tokenizer found at {where}; pass --tokenizer PATH "
        "(a folder with the served model's tokenizer files)"
    )
