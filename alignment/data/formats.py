"""Turn one raw record (a dict from jsonl/parquet/datasets) into a typed row, detecting its format.

Recognised formats (the prompt part and the response part are detected separately):

* prompt part: ``messages`` (a chat list), ``prompt`` (a string, an HH-RLHF ``"\\n\\nHuman: ..."`` dialogue, or a
  chat list) or alpaca ``instruction`` + optional ``input`` (joined as ``instruction + "\\n\\n" + input``);
* response part: ``chosen``/``rejected`` (strings or UltraFeedback-style chat lists whose final assistant message
  is the response) -> preference; ``completion`` + ``label`` -> unpaired; ``response``, ``completion`` or
  ``output`` -> sft; a ``messages`` list ending with an assistant turn -> sft; nothing -> prompt.

Our own ``Row.to_dict()`` output is one of these formats, so artifacts read back to equal rows. Raw fields that
are not consumed go to ``meta`` (a nested ``meta`` dict is merged in). Any problem raises :class:`DataError`
naming the file, line and field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from alignment.data.rows import (
    ROLES,
    ROW_KINDS,
    Message,
    PreferenceRow,
    PromptRow,
    Row,
    SFTRow,
    UnpairedRow,
    content_id,
)

KINDS = (*ROW_KINDS, "auto")
EXPECTED = {
    "preference": "prompt/chosen/rejected",
    "unpaired": "prompt/completion/label",
    "sft": "instruction/input/output, prompt/response, prompt/completion or messages ending with an assistant turn",
    "prompt": "messages, prompt or instruction",
}
SFT_RESPONSE_KEYS = ("response", "completion", "output")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class DataError(ValueError):
    """A bad input file or row: a user error, not a bug.

    The message is complete on its own (it starts with the file, then the line or row number, then the field),
    so a command line can print ``str(error)`` alone and exit with a usage-error status. Lone surrogates (from
    file names or text that are not UTF-8) are written as ``\\udcff`` escapes, so the message always prints.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message.encode("utf-8", "backslashreplace").decode("utf-8"))


@dataclass(frozen=True)
class Location:
    """Where a record came from, for error messages: ``hh.jsonl line 17``, ``data.json row 3 (line 9)``."""

    source: str = "<data>"
    line: int | None = None
    unit: str = "line"
    detail: str | None = None  # e.g. the text line a row of a JSON document starts on

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source} {self.unit} {self.line}"
        return f"{where} ({self.detail})" if self.detail else where


def fail(loc: Location, field: str, problem: str, expected: str | None = None) -> NoReturn:
    """Raise a :class:`DataError` such as ``hh.jsonl line 17: field 'chosen' is missing (expected ...)``."""
    suffix = f" (expected {expected})" if expected else ""
    raise DataError(f"{loc}: field '{field}' {problem}{suffix}")


def parse_row(
    raw: Any, kind: str = "auto", source: str = "<data>", line: int | None = None, unit: str = "line",
    detail: str | None = None,
) -> Row:
    """Convert ``raw`` to the row type ``kind`` asks for ("sft" | "preference" | "unpaired" | "prompt" | "auto").

    "auto" returns the row type the record's fields imply; "prompt" accepts any record with a prompt (response
    fields then stay in ``meta``). ``source``/``line``/``unit``/``detail`` only label errors (see
    :class:`Location`). Raises :class:`DataError`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; expected one of {', '.join(KINDS)}")
    loc = Location(source, line, unit, detail)
    if not isinstance(raw, dict):
        raise DataError(f"{loc}: expected a JSON object with named fields, got {type(raw).__name__}")
    shape = detect_kind(raw)
    target = shape if kind == "auto" else kind
    if target != "prompt" and target != shape:
        _fail_wrong_shape(raw, loc, target, shape)
    if shape == "preference":
        pair = _preference_row(raw, loc)
        if target == "preference":
            return pair
        prompt = PromptRow(id="", messages=pair.messages,
                           meta={**pair.meta, "chosen": pair.chosen, "rejected": pair.rejected})
        return dataclasses.replace(prompt, id=_row_id(raw, prompt))
    messages, consumed, trailing = _prompt_part(raw, loc)
    if target == "prompt":
        extra = {"response": trailing} if trailing is not None else {}
        return _build(PromptRow, raw, consumed, extra, messages=messages)
    if target == "unpaired":
        completion = _response_text(raw, "completion", loc, strip=_has_hh_prompt(raw))
        label = _label(raw, loc)
        return _build(UnpairedRow, raw, consumed | {"completion", "label"}, {},
                      messages=messages, completion=completion, label=label)
    return _sft_row(raw, loc, messages, consumed, trailing)


def detect_kind(raw: dict[str, Any]) -> str:
    """The row kind a record's fields imply: preference, unpaired, sft or prompt (nothing is validated here)."""
    if "chosen" in raw or "rejected" in raw:
        return "preference"
    if "completion" in raw and "label" in raw:
        return "unpaired"
    if any(key in raw for key in SFT_RESPONSE_KEYS):
        return "sft"
    messages = raw.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
            and messages[-1].get("role") == "assistant":
        return "sft"
    return "prompt"


def _fail_wrong_shape(raw: dict[str, Any], loc: Location, target: str, shape: str) -> NoReturn:
    """Name the first field the requested kind needs and the record lacks."""
    fields = ", ".join(sorted(raw)) or "none"
    expected = f"{EXPECTED[target]}; the row has fields {fields}"
    if target == "preference":
        fail(loc, "chosen" if "chosen" not in raw else "rejected", "is missing", expected)
    if target == "unpaired":
        fail(loc, "completion" if "completion" not in raw else "label", "is missing", expected)
    if shape == "prompt" and isinstance(raw.get("messages"), list):
        fail(loc, "messages", "does not end with an assistant turn and no response field is given", expected)
    missing = "output" if "instruction" in raw else "response"
    fail(loc, missing, f"is missing (this is a {shape} row)", expected)


# --- prompt part -------------------------------------------------------------------------------------------


def _prompt_part(raw: dict[str, Any], loc: Location) -> tuple[tuple[Message, ...], set[str], str | None]:
    """Return (prompt messages, consumed keys, trailing assistant text of a chat row or None)."""
    trailing: str | None = None
    if "messages" in raw:
        messages = parse_messages(raw["messages"], loc, "messages")
        if messages and messages[-1]["role"] == "assistant":
            trailing = messages[-1]["content"]
            messages = messages[:-1]
        consumed = {"messages"}
        field = "messages"
    elif "prompt" in raw:
        messages = _prompt_messages(raw["prompt"], loc, "prompt")
        consumed, field = {"prompt"}, "prompt"
    elif "instruction" in raw:
        messages = [{"role": "user", "content": _alpaca_prompt(raw, loc)}]
        consumed, field = {"instruction", "input"}, "instruction"
    else:
        fields = ", ".join(sorted(raw)) or "none"
        fail(loc, "prompt", f"is missing: no 'messages', 'prompt' or 'instruction' (the row has fields {fields})",
             EXPECTED["prompt"])
    check_prompt_messages(messages, loc, field)
    return tuple(messages), consumed, trailing


def _prompt_messages(value: Any, loc: Location, field: str) -> list[Message]:
    """A ``prompt`` value: chat list, HH-RLHF dialogue string, or plain text (one user message)."""
    if isinstance(value, list):
        return parse_messages(value, loc, field)
    if not isinstance(value, str):
        fail(loc, field, f"must be a string or a list of messages, got {type(value).__name__}")
    if is_hh_dialogue(value):
        try:
            return parse_hh_dialogue(value)
        except ValueError as exc:
            fail(loc, field, f"is not a valid HH dialogue: {exc}")
    return [{"role": "user", "content": value}]


def _alpaca_prompt(raw: dict[str, Any], loc: Location) -> str:
    """``instruction``, plus ``"\\n\\n" + input`` when the alpaca input is non-empty (the input is used)."""
    instruction = raw["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        fail(loc, "instruction", "must be a non-empty string")
    extra = raw.get("input")
    if extra is None or (isinstance(extra, str) and not extra.strip()):
        return instruction
    if not isinstance(extra, str):
        fail(loc, "input", f"must be a string, got {type(extra).__name__}")
    return f"{instruction}\n\n{extra}"


def parse_messages(value: Any, loc: Location, field: str) -> list[Message]:
    """Validate a chat list and normalise each entry to ``{"role", "content"}`` (other keys are dropped)."""
    if not isinstance(value, list):
        fail(loc, field, f"must be a list of messages, got {type(value).__name__}")
    messages: list[Message] = []
    for index, message in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            fail(loc, where, f"must be an object with 'role' and 'content', got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            fail(loc, f"{where}.role", f"is {role!r}", " or ".join(ROLES))
        if not isinstance(content, str):
            fail(loc, f"{where}.content", f"must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    return messages


def check_prompt_messages(messages: list[Message] | tuple[Message, ...], loc: Location, field: str) -> None:
    """A prompt conversation must be non-empty and end with a non-blank user turn."""
    if not messages:
        fail(loc, field, "has no prompt messages")
    if messages[-1]["role"] != "user":
        fail(loc, field, f"must end with a user turn, but its last prompt message is {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
        fail(loc, field, "ends with an empty user turn")


def is_hh_dialogue(text: str) -> bool:
    """True for Anthropic HH-RLHF transcripts (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``)."""
    return text.lstrip().startswith("Human:")


def parse_hh_dialogue(text: str) -> list[Message]:
    """Split an HH transcript into alternating user/assistant messages (contents stripped).

    A final empty ``"\\n\\nAssistant:"`` is the generation prompt and is not returned as a message. Raises
    ``ValueError`` when the transcript has text before the first turn or ends with a non-empty assistant turn.
    """
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip()
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"text before the first 'Human:' turn: {parts[0][:40]!r}")
    messages = [{"role": _HH_ROLES[speaker], "content": content.strip()}
                for speaker, content in zip(parts[1::2], parts[2::2], strict=True)]
    if messages and messages[-1]["role"] == "assistant":
        if messages[-1]["content"]:
            raise ValueError("the dialogue ends with an assistant turn that has text (expected a final "
                             "'\\n\\nAssistant:' generation prompt or a Human turn)")
        messages.pop()
    return messages


# --- response part -----------------------------------------------------------------------------------------


def _response_text(raw: dict[str, Any], field: str, loc: Location, strip: bool) -> str:
    """A non-blank response string (``strip`` removes surrounding whitespace, e.g. HH's leading space)."""
    if field not in raw:
        fail(loc, field, "is missing")
    return _check_response(raw[field], loc, field, strip)


def _check_response(value: Any, loc: Location, field: str, strip: bool) -> str:
    if not isinstance(value, str):
        fail(loc, field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        fail(loc, field, "is empty or whitespace-only (an empty response cannot be trained on)")
    return value.strip() if strip else value


def _has_hh_prompt(raw: dict[str, Any]) -> bool:
    """HH responses follow ``"Assistant:"`` with a space, so they are stripped; other responses are kept as is."""
    return "messages" not in raw and isinstance(raw.get("prompt"), str) and is_hh_dialogue(raw["prompt"])


def _label(raw: dict[str, Any], loc: Location) -> bool:
    label = raw["label"]
    if isinstance(label, bool):
        return label
    if isinstance(label, int) and label in (0, 1):
        return bool(label)
    fail(loc, "label", f"must be true/false (desirable or not), got {label!r}")


def _sft_row(raw: dict[str, Any], loc: Location, messages: tuple[Message, ...], consumed: set[str],
             trailing: str | None) -> SFTRow:
    key = next((k for k in SFT_RESPONSE_KEYS if k in raw), None)
    if key is not None and trailing is not None:
        fail(loc, key, "is given but 'messages' already ends with an assistant turn (ambiguous response)")
    if key is None:
        response = _check_response(trailing, loc, "messages[-1].content", strip=False)
        return _build(SFTRow, raw, consumed, {}, messages=messages, response=response)
    response = _response_text(raw, key, loc, strip=_has_hh_prompt(raw))
    return _build(SFTRow, raw, consumed | {key}, {}, messages=messages, response=response)


def _preference_row(raw: dict[str, Any], loc: Location) -> PreferenceRow:
    for field in ("chosen", "rejected"):
        if field not in raw:
            fail(loc, field, "is missing", EXPECTED["preference"])
    chosen, rejected = raw["chosen"], raw["rejected"]
    if isinstance(chosen, list) or isinstance(rejected, list):
        return _preference_from_lists(raw, loc)
    if "prompt" not in raw and "messages" not in raw and isinstance(chosen, str) and is_hh_dialogue(chosen):
        return _preference_from_hh_transcripts(raw, loc)
    messages, consumed, trailing = _prompt_part(raw, loc)
    if trailing is not None:
        fail(loc, "messages", "ends with an assistant turn; a preference prompt must end with a user turn")
    strip = _has_hh_prompt(raw)
    return _build(PreferenceRow, raw, consumed | {"chosen", "rejected"}, {}, messages=messages,
                  chosen=_check_response(chosen, loc, "chosen", strip),
                  rejected=_check_response(rejected, loc, "rejected", strip))


def _preference_from_lists(raw: dict[str, Any], loc: Location) -> PreferenceRow:
    """UltraFeedback style: chosen/rejected are conversations; each final assistant message is the response.

    When the conversations carry the prompt, it must be the same in both, and the row's ``prompt``/``messages``
    fields (copies of it in UltraFeedback) are consumed; otherwise the prompt comes from ``prompt``/``messages``.
    """
    conversations = {}
    for field in ("chosen", "rejected"):
        conversation = parse_messages(raw[field], loc, field)
        if not conversation or conversation[-1]["role"] != "assistant":
            fail(loc, field, "must end with an assistant message (the response)")
        conversations[field] = conversation
    prefix = conversations["chosen"][:-1]
    if prefix != conversations["rejected"][:-1]:
        fail(loc, "rejected", "has a different conversation before its final assistant message than 'chosen'")
    if prefix:
        check_prompt_messages(prefix, loc, "chosen")
        messages, consumed = tuple(prefix), {"prompt", "messages"}
    else:
        messages, consumed, _ = _prompt_part(raw, loc)
    return _build(PreferenceRow, raw, consumed | {"chosen", "rejected"}, {}, messages=messages,
                  chosen=_check_response(conversations["chosen"][-1]["content"], loc, "chosen", False),
                  rejected=_check_response(conversations["rejected"][-1]["content"], loc, "rejected", False))


def _preference_from_hh_transcripts(raw: dict[str, Any], loc: Location) -> PreferenceRow:
    """Original Anthropic files: chosen/rejected are whole transcripts sharing all but the last answer."""
    prompts, answers = {}, {}
    for field in ("chosen", "rejected"):
        text = raw[field]
        if not isinstance(text, str):
            fail(loc, field, f"must be a string, got {type(text).__name__}")
        cut = text.rfind("\n\nAssistant:")
        if cut < 0:
            fail(loc, field, "has no '\\n\\nAssistant:' turn")
        cut += len("\n\nAssistant:")
        prompts[field], answers[field] = text[:cut], text[cut:]
    if prompts["chosen"] != prompts["rejected"]:
        fail(loc, "rejected", "does not share the dialogue before the final assistant turn with 'chosen'")
    messages = _prompt_messages(prompts["chosen"], loc, "chosen")
    check_prompt_messages(messages, loc, "chosen")
    return _build(PreferenceRow, raw, {"chosen", "rejected"}, {}, messages=tuple(messages),
                  chosen=_check_response(answers["chosen"], loc, "chosen", True),
                  rejected=_check_response(answers["rejected"], loc, "rejected", True))


# --- assembly ----------------------------------------------------------------------------------------------


def _build(row_type: Any, raw: dict[str, Any], consumed: set[str], extra_meta: dict[str, Any],
           **content: Any) -> Any:
    """Create the row: id from the record's ``id`` or the content hash, meta from the unconsumed fields."""
    nested = raw.get("meta")
    meta = dict(nested) if isinstance(nested, dict) else {}
    skip = consumed | {"id"} | ({"meta"} if isinstance(nested, dict) else set())
    meta.update({key: value for key, value in raw.items() if key not in skip})
    meta.update(extra_meta)
    row = row_type(id="", meta=meta, **content)
    return dataclasses.replace(row, id=_row_id(raw, row))


def _row_id(raw: dict[str, Any], row: Row) -> str:
    """The record's own ``id`` when it has one, else a hash of the row content (equal content, equal id)."""
    own = raw.get("id")
    if own is None or (isinstance(own, str) and not own.strip()):
        return content_id(row.content())
    return str(own)
