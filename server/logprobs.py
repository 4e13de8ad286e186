"""vLLM per-token logprobs -> the two OpenAI logprob shapes (legacy completions, chat)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vllm.logprobs import Logprob

from server.schemas import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob

TokenLogprobs = Sequence[dict[int, Logprob]]


def _text(token_id: int, lp: Logprob, decode: Callable[[int], str]) -> str:
    return lp.decoded_token if lp.decoded_token is not None else decode(token_id)


def completion_logprobs(token_ids: Sequence[int], logprobs: TokenLogprobs, top: int,
                        decode: Callable[[int], str], offset: int = 0) -> CompletionLogprobs:
    """Legacy completions shape; `offset` is the text offset of the first token."""
    out = CompletionLogprobs()
    for token_id, step in zip(token_ids, logprobs):
        chosen = step[token_id]
        text = _text(token_id, chosen, decode)
        out.tokens.append(text)
        out.token_logprobs.append(chosen.logprob)
        ranked = sorted(step.items(), key=lambda kv: kv[1].logprob, reverse=True)[:top]
        out.top_logprobs.append({_text(t, lp, decode): lp.logprob for t, lp in ranked})
        out.text_offset.append(offset)
        offset += len(text)
    return out


def chat_logprobs(token_ids: Sequence[int], logprobs: TokenLogprobs, top: int,
                  decode: Callable[[int], str]) -> ChatLogprobs:
    """Chat shape: one entry per generated token with its `top` alternatives."""
    content = []
    for token_id, step in zip(token_ids, logprobs):
        chosen = step[token_id]
        text = _text(token_id, chosen, decode)
        ranked = sorted(step.items(), key=lambda kv: kv[1].logprob, reverse=True)[:top]
        alternatives = [TopLogprob(token=(s := _text(t, lp, decode)), logprob=lp.logprob,
                                   bytes=list(s.encode())) for t, lp in ranked]
        content.append(TokenLogprob(token=text, logprob=chosen.logprob, bytes=list(text.encode()),
                                    top_logprobs=alternatives))
    return ChatLogprobs(content=content)
