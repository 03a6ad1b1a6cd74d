"""Chat rendering, tokenization with exact response masks, and truncation.

Conventions (every trainer relies on them):

* The prompt is rendered with the tokenizer's chat template (``add_generation_prompt=True``) and tokenized with
  ``add_special_tokens=False``, because the template itself carries the BOS. If the tokenizer has a BOS token and
  the template did not emit it, it is prepended once; duplicated leading BOS tokens are collapsed to one.
* Response ids are taken from tokenizing ``prompt_text + response`` once and cutting at the prompt's length, so
  the ids are exactly those the model sees in the full sequence. When BPE merges across the prompt/response
  boundary (the prompt ids are then not a prefix of the full ids), the response is tokenized alone instead and
  the example is flagged ``prefix_fallback``.
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


def encode_prompt(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[int]]:
    """Rendered prompt text and its ids as tokenized (template BOS included, nothing else added)."""
    text = render_prompt(tokenizer, messages)
    return text, encode_text(tokenizer, text)


def tokenize_sft(
    tokenizer: Any,
    row: SFTRow | UnpairedRow,
    max_length: int,
    truncation: str = "keep_end",
    min_prompt_length: int | None = None,
) -> TokenizedSFT | None:
    """Tokenize an SFT (or unpaired/KTO) row into ids + loss mask; ``None`` if truncation leaves no response."""
    _check_args(tokenizer, max_length, truncation)
    response = row.response if isinstance(row, SFTRow) else row.completion
    prompt_text, raw_prompt = encode_prompt(tokenizer, row.messages)
    response_ids, fallback = _response_ids(tokenizer, prompt_text, raw_prompt, response)
    fitted = _fit(_with_single_bos(tokenizer, raw_prompt), [response_ids], max_length, truncation,
                  min_prompt_length, _bos_id(tokenizer))
    if fitted is None:
        return None
    prompt_ids, (kept_response,), truncated = fitted
    return TokenizedSFT(
        id=row.id,
        input_ids=prompt_ids + kept_response,
        labels=[IGNORE_INDEX] * len(prompt_ids) + kept_response,
        loss_mask=[0] * len(prompt_ids) + [1] * len(kept_response),
        prompt_length=len(prompt_ids),
        truncated=truncated,
        prefix_fallback=fallback,
        label=row.label if isinstance(row, UnpairedRow) else None,
    )


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
    _check_args(tokenizer, max_length, truncation)
    prompt_text, raw_prompt = encode_prompt(tokenizer, row.messages)
    chosen, chosen_fallback = _response_ids(tokenizer, prompt_text, raw_prompt, row.chosen)
    rejected, rejected_fallback = _response_ids(tokenizer, prompt_text, raw_prompt, row.rejected)
    fitted = _fit(_with_single_bos(tokenizer, raw_prompt), [chosen, rejected], max_length, truncation,
                  min_prompt_length, _bos_id(tokenizer))
    if fitted is None:
        return None
    prompt_ids, (kept_chosen, kept_rejected), truncated = fitted
    return TokenizedPair(row.id, prompt_ids, kept_chosen, kept_rejected, truncated,
                         chosen_fallback or rejected_fallback)


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
    examples: list[TokenizedSFT | TokenizedPair] = []
    stats = TokenizeStats()
    lengths: list[int] = []
    for row in rows:
        stats.rows += 1
        example = _tokenize_any(tokenizer, row, max_length, truncation, min_prompt_length)
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


def _tokenize_any(tokenizer: Any, row: Row, max_length: int, truncation: str,
                  min_prompt_length: int | None) -> TokenizedSFT | TokenizedPair | None:
    if isinstance(row, PreferenceRow):
        return tokenize_preference(tokenizer, row, max_length, truncation, min_prompt_length)
    if isinstance(row, PromptRow):
        raise TypeError(f"row {row.id} is a prompt row: it has no response to tokenize for training")
    return tokenize_sft(tokenizer, row, max_length, truncation, min_prompt_length)


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


def _response_ids(tokenizer: Any, prompt_text: str, prompt_ids: list[int], response: str) -> tuple[list[int], bool]:
    """Response ids + one EOS, cut from the full sequence's ids; ``(ids, True)`` if BPE broke the prefix."""
    full_ids = encode_text(tokenizer, prompt_text + response)
    fallback = full_ids[: len(prompt_ids)] != prompt_ids
    ids = encode_text(tokenizer, response) if fallback else full_ids[len(prompt_ids):]
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
