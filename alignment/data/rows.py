"""Row schemas shared by every stage: SFT, preference, unpaired (KTO-style) and prompt-only rows.

A row's ``messages`` is always the *prompt* conversation: a tuple of ``{"role", "content"}`` dicts that ends with
a user turn, so rendering it with ``add_generation_prompt=True`` opens the assistant turn the response fills.
Rows are frozen dataclasses; ``to_dict()`` gives the JSON form written to ``*.jsonl`` artifacts, which
:func:`alignment.data.formats.parse_row` reads back to the same row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from alignment.hashing import row_id

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


def messages_id(messages: tuple[Message, ...] | list[Message]) -> str:
    """Stable id of a prompt conversation; equals the ``id`` a :class:`PromptRow` with these messages gets.

    Downstream rows (responses, pairs) use it as ``prompt_id`` to join back to their prompt.
    """
    return row_id({"messages": [dict(m) for m in messages]})


def _messages_list(messages: tuple[Message, ...]) -> list[Message]:
    return [dict(m) for m in messages]


@dataclass(frozen=True)
class SFTRow:
    """A prompt conversation and the assistant response to train on."""

    id: str
    messages: tuple[Message, ...]
    response: str
    meta: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "sft"

    def content(self) -> dict[str, Any]:
        """The fields the row id is hashed from (``meta`` is not content)."""
        return {"messages": _messages_list(self.messages), "response": self.response}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"id", "messages", "response", "meta"}``."""
        return {"id": self.id, **self.content(), "meta": dict(self.meta)}


@dataclass(frozen=True)
class PreferenceRow:
    """A prompt conversation with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    id: str
    messages: tuple[Message, ...]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "preference"

    def content(self) -> dict[str, Any]:
        """The fields the row id is hashed from (``meta`` is not content)."""
        return {"messages": _messages_list(self.messages), "chosen": self.chosen, "rejected": self.rejected}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"id", "messages", "chosen", "rejected", "meta"}``."""
        return {"id": self.id, **self.content(), "meta": dict(self.meta)}


@dataclass(frozen=True)
class UnpairedRow:
    """A prompt conversation with one completion labelled desirable (``True``) or undesirable (KTO-style)."""

    id: str
    messages: tuple[Message, ...]
    completion: str
    label: bool
    meta: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "unpaired"

    def content(self) -> dict[str, Any]:
        """The fields the row id is hashed from (``meta`` is not content)."""
        return {"messages": _messages_list(self.messages), "completion": self.completion, "label": self.label}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"id", "messages", "completion", "label", "meta"}``."""
        return {"id": self.id, **self.content(), "meta": dict(self.meta)}


@dataclass(frozen=True)
class PromptRow:
    """A prompt conversation alone (for generation or evaluation); ``meta`` may hold a reference answer."""

    id: str
    messages: tuple[Message, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "prompt"

    def content(self) -> dict[str, Any]:
        """The fields the row id is hashed from (``meta`` is not content)."""
        return {"messages": _messages_list(self.messages)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"id", "messages", "meta"}``."""
        return {"id": self.id, **self.content(), "meta": dict(self.meta)}


Row = SFTRow | PreferenceRow | UnpairedRow | PromptRow
ROW_TYPES: dict[str, type] = {
    "sft": SFTRow,
    "preference": PreferenceRow,
    "unpaired": UnpairedRow,
    "prompt": PromptRow,
}
ROW_KINDS = tuple(ROW_TYPES)


def content_id(content: dict[str, Any]) -> str:
    """Row id of a row's content dict (as returned by ``Row.content()``): stable and equal for equal content.

    A prompt row's id equals :func:`messages_id` of its messages.
    """
    return row_id(content)
