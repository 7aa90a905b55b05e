"""Token generation with a decoder whose key/value cache stays in the session's arena.

The decoder is one step of a causal language model exported with a static cache, as the zoo's
`gpt2_decoder` and Hugging Face's static-cache exports are: `input_ids` int64 [1, 1] at
`cache_position` int64 [1] in, `logits` [1, 1, vocab] out, and per layer the cache
`past_key_values.N.key|value` [1, heads, cache, head width] in and `present.N.key|value` out with
this token's keys and values written in. Imported with `state=cache_state(outputs)`, the presents
become the pasts inside the arena after each run (`Graph.state`), so a step copies in one token id
and one position and copies out only the logits. The prompt runs one token per step, since the
decoder takes one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import FeedError

INPUT_IDS = "input_ids"
CACHE_POSITION = "cache_position"
LOGITS = "logits"
PRESENT = re.compile(r"present\.(\d+)\.(key|value)")
CACHE_AXIS = 2  # [batch, heads, positions, head width]


def cache_state(outputs: Iterable[str]) -> dict[str, str]:
    """The state pairs of a static-cache decoder, by name: `present.N.key` -> `past_key_values.N.key`
    for every such output (pass it as `import_model(..., state=)`)."""
    return {
        name: f"past_key_values.{m[1]}.{m[2]}"
        for name in outputs
        if (m := PRESENT.fullmatch(name)) is not None
    }


@dataclass(frozen=True)
class Decoder:
    """What generation needs to know of a session's model, checked once."""

    vocab: int
    cache: int  # positions the cache holds: prompt plus new tokens must fit

    @classmethod
    def of(cls, session) -> Decoder:
        graph = session.package.graph
        feeds = {t.name: t for t in session.inputs}
        outputs = {t.name: t for t in session.outputs}
        want = {INPUT_IDS: ((1, 1), "int64"), CACHE_POSITION: ((1,), "int64")}
        got = {name: (tuple(t.shape), t.dtype) for name, t in feeds.items()}
        if not graph.state or got != want or LOGITS not in outputs:
            raise FeedError(
                f"model {graph.name!r} is not a decoder with a cache kept in its arena: it takes {got} "
                f"(a decoder takes {want} and the cache as state), returns {list(outputs)} (a decoder "
                f"returns {LOGITS!r}), and has {len(graph.state)} state pairs (import it with "
                f"state=cache_state(outputs))"
            )
        lengths = {graph.shape(name)[CACHE_AXIS] for name in graph.state.values()}
        if len(lengths) != 1:
            raise FeedError(
                f"model {graph.name!r}: its cache inputs hold {sorted(lengths)} positions, not one length"
            )
        return cls(vocab=int(outputs[LOGITS].shape[-1]), cache=lengths.pop())


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # the new tokens, without the prompt
    seconds: list[float]  # per new token, since the previous one (the first: the whole prompt)


def generate(
    session,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    greedy: bool | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
) -> Generation:
    """`max_new_tokens` tokens after `prompt_ids`, a new conversation (the cache is zeroed first).

    Greedy (the most likely token) unless `greedy=False`, `top_k` or `top_p` is given: then sampled
    at `temperature` from the `top_k` most likely tokens (all when None), cut to the fewest whose
    probability reaches `top_p`, with a numpy generator seeded by `seed` (the same seed, the same
    tokens). The budget may change between tokens
    (`session.set_budget`): the cache moves to the new plan's arena."""
    tokens, seconds = [], []
    for token, elapsed in stream(
        session, prompt_ids, max_new_tokens, greedy=greedy, top_k=top_k, top_p=top_p,
        temperature=temperature, seed=seed,
    ):  # fmt: skip
        tokens.append(token)
        seconds.append(elapsed)
    return Generation(tokens, seconds)


def stream(
    session,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    greedy: bool | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
) -> Iterator[tuple[int, float]]:
    """`generate` one token at a time: (token id, seconds since the previous one). Every argument is
    checked before the first step runs. The session must not run anything else until it ends."""
    decoder = Decoder.of(session)
    prompt = _checked_prompt(prompt_ids, decoder)
    sampled = greedy is False or top_k is not None or top_p is not None
    if greedy and sampled:
        raise FeedError(f"greedy generation takes no top_k ({top_k}) or top_p ({top_p})")
    _check_sampling(max_new_tokens, top_k, top_p, temperature, decoder)
    if len(prompt) + max_new_tokens > decoder.cache:
        raise FeedError(
            f"a prompt of {len(prompt)} tokens and {max_new_tokens} new tokens need {len(prompt) + max_new_tokens} "
            f"cache positions; the model's cache holds {decoder.cache}"
        )
    return _steps(session, prompt, max_new_tokens, _Sampler(sampled, top_k, top_p, temperature, seed))


def _steps(session, prompt: list[int], max_new_tokens: int, sampler: _Sampler) -> Iterator[tuple[int, float]]:
    if max_new_tokens == 0:
        return
    session.reset_state()
    ids, position = np.zeros((1, 1), np.int64), np.zeros(1, np.int64)
    feeds = {INPUT_IDS: ids, CACHE_POSITION: position}
    start = time.perf_counter()
    token = prompt[0]
    for step in range(len(prompt) + max_new_tokens - 1):
        ids[0, 0], position[0] = token, step
        logits = session.run(feeds)[LOGITS].reshape(-1)
        if step + 1 < len(prompt):
            token = prompt[step + 1]
            continue
        token = sampler.pick(logits)
        now = time.perf_counter()
        yield token, now - start
        start = now


def _checked_prompt(prompt_ids: Sequence[int], decoder: Decoder) -> list[int]:
    values = np.asarray(prompt_ids).reshape(-1)
    if not values.size:
        raise FeedError("the prompt holds no token: generation starts from at least one")
    if values.dtype.kind not in "iu":
        raise FeedError(f"token ids must be integers, got {values.dtype} {values[:8].tolist()}")
    prompt = [int(t) for t in values]
    for i, token in enumerate(prompt):
        if not 0 <= token < decoder.vocab:
            raise FeedError(
                f"token id {token} at prompt position {i} is outside the vocabulary [0, {decoder.vocab})"
            )
    return prompt


def _check_sampling(max_new_tokens: int, top_k, top_p, temperature: float, decoder: Decoder) -> None:
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 0:
        raise FeedError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    if top_k is not None and not 1 <= top_k <= decoder.vocab:
        raise FeedError(f"top_k must be in [1, {decoder.vocab}], got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise FeedError(f"top_p must be in (0, 1], got {top_p}")
    if not temperature > 0.0:
        raise FeedError(f"temperature must be > 0, got {temperature}")


class _Sampler:
    def __init__(self, sampled: bool, top_k: int | None, top_p: float | None, temperature: float, seed):
        self.sampled, self.top_k, self.top_p, self.temperature = sampled, top_k, top_p, temperature
        self.rng = np.random.default_rng(seed)

    def pick(self, logits: np.ndarray) -> int:
        if not self.sampled:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        order = np.argsort(-z, kind="stable")[: self.top_k]  # most likely first; ties by id
        p = np.exp(z[order] - z[order[0]])
        p /= p.sum()
        if self.top_p is not None:  # the fewest most likely tokens whose probability reaches top_p
            keep = min(int(np.searchsorted(np.cumsum(p), self.top_p)) + 1, len(p))
            order, p = order[:keep], p[:keep] / p[:keep].sum()
        return int(order[self.rng.choice(len(order), p=p)])
