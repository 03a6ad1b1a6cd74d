"""Chat rendering, tokenization with exact response masks, and truncation.

Conventions (every trainer relies on them):

* The prompt is rendered with the tokenizer's chat template (``add_generation_prompt=True``) and tokenized with
  ``add_special_tokens=False``, because the template itself carries the BOS. If the tokenizer has a BOS token and
  the template did not emit it, it is prepended once; duplicated leading BOS tokens are collapsed to one.
* Response ids are those of ``prompt_text + response`` cut at the prompt's length, so the ids are exactly those
  the model sees in the full sequence. When BPE merges across the prompt/response boundary (the prompt ids are
  then not a prefix of the full ids), the response is tokenized alone instead and the example is flagged
  ``prefix_fallback``. To avoid encoding a long dialogue once per response, each response is encoded after the
  prompt's *tail* only, the text from its last special token on: special tokens are atomic in HF tokenizers
  (the text on either side is tokenized independently), so the ids equal those of the full text. The tail is
  used only where its ids in isolation equal the prompt's last ids; otherwise the full text is encoded.
  :func:`tokenize_dataset` encodes many rows per tokenizer call (fast tokenizers encode a batch in Rust).
* Every complete response ends with exactly one EOS, and the loss covers exactly the response tokens + EOS.
* Truncation (when ``len(prompt) + len(response) > max_length``): the prompt is shortened first (``keep_end``
  drops its oldest tokens but keeps the BOS, ``keep_start`` drops its end) down to ``min_prompt_length`` tokens
  (default ``max_length // 2``, at least 1); then the response is cut from the right. A cut response has no EOS
  (the model should not learn to stop where the text was cut). If no response token is left, the example is
  dropped (``None``): we never train on an empty response. A pair whose chosen and rejected ids are identical
  after truncation (responses that differ only past the cut) is dropped by :func:`tokenize_dataset`: the paired
  losses have zero gradient on it.
* ``labels`` are unshifted (``labels[t]`` is the target for ``input_ids[t]``; models shift internally) and hold
  -100 on prompt tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from alignment.data.rows import Message, PreferenceRow, PromptRow, Row, SFTRow, UnpairedRow
from alignment.data.stats import length_summary

IGNORE_INDEX = -100
TRUNCATION_SIDES = ("keep_end", "keep_start")
_FALLBACK_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class TokenizedSFT:
    """One training sequence: ``input_ids`` = prompt + response; ``loss_mask`` is 1 exactly on the response."""

    id: str
    input_ids: list[int]
    labels: list[int]
    loss_mask: list[int]
    prompt_length: int
    truncated: bool = False
    prefix_fallback: bool = False
    label: bool | None = None  # desirability of an UnpairedRow (KTO); None for SFT rows

    @property
    def response_length(self) -> int:
        """Number of loss tokens (response + EOS)."""
        return len(self.input_ids) - self.prompt_length


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair sharing one prompt; ``chosen_ids``/``rejected_ids`` are response ids incl. EOS."""

    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False
    prefix_fallback: bool = False

    @property
    def length(self) -> int:
        """Longest single sequence (prompt + the longer response), the length the concatenated forward needs."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class TokenizeStats:
    """Counts from :func:`tokenize_dataset`; ``lengths`` summarises kept sequence lengths in tokens.

    ``dropped_identical_pairs``: preference pairs whose chosen and rejected token ids are the same after
    truncation. Rows left out while reading (bad, degenerate, duplicate) are counted by ``ReadResult.counts()``.
    """

    rows: int = 0
    kept: int = 0
    dropped_empty_after_truncation: int = 0
    dropped_identical_pairs: int = 0
    truncated: int = 0
    prefix_fallbacks: int = 0
    lengths: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for manifests and logs."""
        return asdict(self)


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """Prompt text that opens the assistant turn.

    Uses ``tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)``. Without a chat
    template the plain fallback is one ``"Role: content\\n"`` line per message (System/User/Assistant) followed by
    ``"Assistant: "``, e.g. ``"User: hi\\nAssistant: "``.
    """
    conversation = [dict(message) for message in messages]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False))
    lines = [f"{_FALLBACK_ROLE_NAMES[m['role']]}: {m['content']}\n" for m in conversation]
    return "".join(lines) + "Assistant: "


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added by the tokenizer."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (no special tokens added), from one tokenizer call for the whole batch."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class _Limits:
    max_length: int
    truncation: str
    min_prompt_length: int | None


@dataclass(frozen=True)
class _Plan:
    """What one row needs encoded: ``texts`` = [prompt, tail, tail + each response] (no separate tail when the
    prompt has no special token: the tail is then the whole prompt)."""

    row: SFTRow | UnpairedRow | PreferenceRow
    prompt_text: str
    tail: str
    responses: tuple[str, ...]

    @property
    def texts(self) -> list[str]:
        own_tail = [self.tail] if self.tail != self.prompt_text else []
        return [self.prompt_text, *own_tail, *(self.tail + response for response in self.responses)]


def tokenize_sft(
    tokenizer: Any,
    row: SFTRow | UnpairedRow,
    max_length: int,
    truncation: str = "keep_end",
    min_prompt_length: int | None = None,
) -> TokenizedSFT | None:
    """Tokenize an SFT (or unpaired/KTO) row into ids + loss mask; ``None`` if truncation leaves no response."""
    example = _tokenize_one(tokenizer, row, _Limits(max_length, truncation, min_prompt_length))
    assert example is None or isinstance(example, TokenizedSFT)
    return example


def tokenize_preference(
    tokenizer: Any,
    row: PreferenceRow,
    max_length: int,
    truncation: str = "keep_end",
    min_prompt_length: int | None = None,
) -> TokenizedPair | None:
    """Tokenize a pair: prompt ids once, each response incl. EOS; prompt + each response fits ``max_length``.

    Returns ``None`` when truncation would leave either response empty.
    """
    example = _tokenize_one(tokenizer, row, _Limits(max_length, truncation, min_prompt_length))
    assert example is None or isinstance(example, TokenizedPair)
    return example


def tokenize_dataset(
    tokenizer: Any,
    rows: Iterable[Row],
    max_length: int,
    truncation: str = "keep_end",
    min_prompt_length: int | None = None,
) -> tuple[list[TokenizedSFT | TokenizedPair], TokenizeStats]:
    """Tokenize SFT/unpaired rows to :class:`TokenizedSFT` and preference rows to :class:`TokenizedPair`.

    Dropped rows (no response token left after truncation; pairs identical after truncation) are counted in
    ``stats``; prompt rows are an error.
    """
    _check_args(tokenizer, max_length, truncation)
    limits = _Limits(max_length, truncation, min_prompt_length)
    examples: list[TokenizedSFT | TokenizedPair] = []
    stats = TokenizeStats()
    lengths: list[int] = []
    for example in _encoded_in_chunks(tokenizer, rows, limits):
        stats.rows += 1
        if example is None:
            stats.dropped_empty_after_truncation += 1
            continue
        if isinstance(example, TokenizedPair) and example.chosen_ids == example.rejected_ids:
            stats.dropped_identical_pairs += 1
            continue
        examples.append(example)
        stats.truncated += int(example.truncated)
        stats.prefix_fallbacks += int(example.prefix_fallback)
        lengths.append(len(example.input_ids) if isinstance(example, TokenizedSFT) else example.length)
    stats.kept = len(examples)
    stats.lengths = length_summary(lengths)
    return examples, stats


def preview(tokenizer: Any, tokenized: TokenizedSFT | TokenizedPair) -> str:
    """Readable text of one example: prompt as is, each loss-masked span inside ``[[...]]`` (special tokens shown)."""
    if isinstance(tokenized, TokenizedSFT):
        return _marked_text(tokenizer, tokenized.input_ids, tokenized.loss_mask)
    parts = []
    for name, response in (("chosen", tokenized.chosen_ids), ("rejected", tokenized.rejected_ids)):
        ids = tokenized.prompt_ids + response
        mask = [0] * len(tokenized.prompt_ids) + [1] * len(response)
        parts.append(f"--- {name} ---\n{_marked_text(tokenizer, ids, mask)}")
    return "\n".join(parts)


# --- helpers -----------------------------------------------------------------------------------------------


ENCODE_CHUNK_ROWS = 256  # rows per tokenizer call: large enough to amortise the call, small enough to stream


def _encoded_in_chunks(tokenizer: Any, rows: Iterable[Row],
                       limits: _Limits) -> Iterable[TokenizedSFT | TokenizedPair | None]:
    """Each row tokenized (``None`` where truncation empties a response), in order, one encode call per chunk."""
    chunk: list[_Plan] = []
    for row in rows:
        chunk.append(_plan(tokenizer, row))
        if len(chunk) == ENCODE_CHUNK_ROWS:
            yield from _encode_chunk(tokenizer, chunk, limits)
            chunk = []
    yield from _encode_chunk(tokenizer, chunk, limits)


def _tokenize_one(tokenizer: Any, row: Row, limits: _Limits) -> TokenizedSFT | TokenizedPair | None:
    _check_args(tokenizer, limits.max_length, limits.truncation)
    return _encode_chunk(tokenizer, [_plan(tokenizer, row)], limits)[0]


def _encode_chunk(tokenizer: Any, plans: list[_Plan],
                  limits: _Limits) -> list[TokenizedSFT | TokenizedPair | None]:
    texts = [plan.texts for plan in plans]
    ids = encode_texts(tokenizer, [text for row_texts in texts for text in row_texts])
    examples, start = [], 0
    for plan, row_texts in zip(plans, texts, strict=True):
        examples.append(_assemble(tokenizer, plan, ids[start:start + len(row_texts)], limits))
        start += len(row_texts)
    return examples


def _plan(tokenizer: Any, row: Row) -> _Plan:
    if isinstance(row, PromptRow):
        raise TypeError(f"row {row.id} is a prompt row: it has no response to tokenize for training")
    prompt_text = render_prompt(tokenizer, row.messages)
    specials = getattr(tokenizer, "all_special_tokens", None) or []
    split = max([prompt_text.rfind(token) for token in specials if token] + [0])
    if isinstance(row, PreferenceRow):
        responses: tuple[str, ...] = (row.chosen, row.rejected)
    else:
        responses = (row.response if isinstance(row, SFTRow) else row.completion,)
    return _Plan(row, prompt_text, prompt_text[split:], responses)


def _assemble(tokenizer: Any, plan: _Plan, ids: list[list[int]],
              limits: _Limits) -> TokenizedSFT | TokenizedPair | None:
    """The example from a plan's encoded texts: exact response ids, one BOS, one EOS, fitted to the limits."""
    raw_prompt = ids[0]
    tail_ids = ids[1] if plan.tail != plan.prompt_text else raw_prompt
    joined = ids[len(ids) - len(plan.responses):]
    found = [_response_ids(tokenizer, plan, raw_prompt, tail_ids, joined_ids, response)
             for joined_ids, response in zip(joined, plan.responses, strict=True)]
    fitted = _fit(_with_single_bos(tokenizer, raw_prompt), [response for response, _ in found], limits.max_length,
                  limits.truncation, limits.min_prompt_length, _bos_id(tokenizer))
    if fitted is None:
        return None
    prompt_ids, kept, truncated = fitted
    fallback = any(flag for _, flag in found)
    row = plan.row
    if isinstance(row, PreferenceRow):
        return TokenizedPair(row.id, prompt_ids, kept[0], kept[1], truncated, fallback)
    return TokenizedSFT(
        id=row.id,
        input_ids=prompt_ids + kept[0],
        labels=[IGNORE_INDEX] * len(prompt_ids) + kept[0],
        loss_mask=[0] * len(prompt_ids) + [1] * len(kept[0]),
        prompt_length=len(prompt_ids),
        truncated=truncated,
        prefix_fallback=fallback,
        label=row.label if isinstance(row, UnpairedRow) else None,
    )


def _check_args(tokenizer: Any, max_length: int, truncation: str) -> None:
    _eos_id(tokenizer)
    if truncation not in TRUNCATION_SIDES:
        raise ValueError(f"truncation={truncation!r}; expected one of {', '.join(TRUNCATION_SIDES)}")
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be >= 2 (one prompt token and one response token)")


def _bos_id(tokenizer: Any) -> int | None:
    return getattr(tokenizer, "bos_token_id", None)


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: responses must end with EOS for the model to learn to stop")
    return int(eos)


def _with_single_bos(tokenizer: Any, prompt_ids: list[int]) -> list[int]:
    """Exactly one leading BOS when the tokenizer has one (templates may emit none, or one on top of another)."""
    bos = _bos_id(tokenizer)
    if bos is None:
        return list(prompt_ids)
    start = 0
    while start < len(prompt_ids) and prompt_ids[start] == bos:
        start += 1
    return [bos] + list(prompt_ids[start:])


def _response_ids(tokenizer: Any, plan: _Plan, prompt_ids: list[int], tail_ids: list[int], joined_ids: list[int],
                  response: str) -> tuple[list[int], bool]:
    """Response ids + one EOS, cut from ``tail + response``'s ids; ``(ids, True)`` if BPE broke the prefix.

    When the tail does not encode in isolation as it does at the end of the prompt (it did not start at a token
    boundary), ``prompt + response`` is encoded whole instead.
    """
    if prompt_ids[len(prompt_ids) - len(tail_ids):] != tail_ids:
        tail_ids, joined_ids = prompt_ids, encode_text(tokenizer, plan.prompt_text + response)
    fallback = joined_ids[: len(tail_ids)] != tail_ids
    ids = encode_text(tokenizer, response) if fallback else joined_ids[len(tail_ids):]
    eos = _eos_id(tokenizer)
    if not ids or ids[-1] != eos:  # a response whose text already ends with the EOS string keeps just that one
        ids.append(eos)
    return ids, fallback


def _fit(prompt_ids: list[int], responses: list[list[int]], max_length: int, truncation: str,
         min_prompt_length: int | None, bos: int | None) -> tuple[list[int], list[list[int]], bool] | None:
    """Shorten the prompt, then the responses, so prompt + each response <= ``max_length``; None if one empties."""
    longest = max(len(response) for response in responses)
    if len(prompt_ids) + longest <= max_length:
        return prompt_ids, responses, False
    floor = max_length // 2 if min_prompt_length is None else min_prompt_length
    floor = max(1, min(len(prompt_ids), floor))
    keep = max(floor, max_length - longest)
    prompt_ids = _shorten(prompt_ids, keep, truncation, bos)
    budget = max_length - len(prompt_ids)
    if budget <= 0:
        return None
    return prompt_ids, [response[:budget] for response in responses], True


def _shorten(ids: list[int], keep: int, truncation: str, bos: int | None) -> list[int]:
    """Keep ``keep`` tokens: the first ones (keep_start) or a leading BOS plus the last ones (keep_end)."""
    if keep >= len(ids):
        return ids
    if truncation == "keep_start":
        return ids[:keep]
    if bos is not None and ids and ids[0] == bos:
        return [bos] + (ids[len(ids) - (keep - 1):] if keep > 1 else [])
    return ids[len(ids) - keep:]


def _marked_text(tokenizer: Any, ids: list[int], mask: list[int]) -> str:
    """Decode consecutive runs of equal mask value; runs with mask 1 are wrapped in ``[[`` ``]]``."""
    pieces: list[str] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            text = tokenizer.decode(ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            pieces.append(f"[[{text}]]" if mask[start] else text)
            start = end
    return "".join(pieces)
