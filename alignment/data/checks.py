"""Rows that parse but should not be trained on as they are: degenerate preference pairs and duplicate rows.

* A preference pair whose ``chosen`` and ``rejected`` are the same response is degenerate: every paired loss
  (the pairwise term of DPO, IPO, SimPO, ORPO...) sees the same sequence twice, so its gradient is zero; a data
  filter would read it as a preference that does not exist. Responses are compared after the normalisation the
  row parser applies (HH responses are already stripped) plus: surrounding whitespace is ignored, ``\\r\\n`` is
  ``\\n`` and text is compared in Unicode NFC form (canonically equivalent text is the same text). Whitespace
  *inside* a response counts: indentation in code and line breaks in verse are content, so "a  b" and "a b" are
  different responses.
* A row whose id was already seen is a duplicate (ids are content hashes unless the data has its own ``id``, so
  equal content means equal id). Duplicates are always counted; they are dropped only on request, because a
  dataset may repeat a row on purpose (up-weighting). The first occurrence is the one kept. Two rows with the
  same own ``id`` but different content count as duplicates too (caches downstream are keyed by row id); their
  note says so.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from alignment.data.formats import Location
from alignment.data.rows import PreferenceRow, Row

DUPLICATES = ("keep", "drop")
NOTE_SAMPLES = 10  # examples kept of each kind of note


def comparable_response(text: str) -> str:
    """The form in which two responses are compared: NFC, ``\\n`` line ends, surrounding whitespace removed."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n")).strip()


def is_degenerate_pair(row: PreferenceRow) -> bool:
    """True when ``chosen`` and ``rejected`` are the same response (see the module docstring for 'same')."""
    return comparable_response(row.chosen) == comparable_response(row.rejected)


@dataclass
class RowScreen:
    """Drops degenerate pairs and counts (and, with ``duplicates="drop"``, drops) repeated row ids.

    ``notes`` holds up to ``NOTE_SAMPLES`` located examples of each, for logs and error reports.
    """

    duplicates: str = "keep"
    degenerate_pairs: int = 0
    duplicate_rows: int = 0
    notes: list[str] = field(default_factory=list)
    _first_seen: dict[str, tuple[Location, Row]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.duplicates not in DUPLICATES:
            raise ValueError(f"duplicates={self.duplicates!r}; expected one of {', '.join(DUPLICATES)}")

    def admit(self, row: Row, loc: Location) -> bool:
        """Whether ``row`` (read at ``loc``) is used; counts and notes it when it is not a plain new row."""
        if isinstance(row, PreferenceRow) and is_degenerate_pair(row):
            self.degenerate_pairs += 1
            self._note(self.degenerate_pairs, f"{loc}: dropped: 'chosen' and 'rejected' are the same response")
            return False
        first = self._first_seen.get(row.id)
        if first is None:
            self._first_seen[row.id] = (loc, row)
            return True
        self.duplicate_rows += 1
        first_loc, first_row = first
        differs = "" if first_row.content() == row.content() else " but different content"
        action = "dropped" if self.duplicates == "drop" else "kept"
        self._note(self.duplicate_rows, f"{loc}: {action}: same row id {row.id!r} as {first_loc}{differs}")
        return self.duplicates == "keep"

    def _note(self, count: int, text: str) -> None:
        if count <= NOTE_SAMPLES:
            self.notes.append(text)
