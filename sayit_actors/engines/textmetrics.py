"""Word and character error rates: how far a transcript is from the text that was spoken.

Shared by the tests and the benchmarks, so that both score a transcript the same way. A plain
Levenshtein alignment over normalized tokens, split into substitutions, deletions (words lost)
and insertions (words invented), because a lost sentence and an invented one are different
failures even when they cost the same number of edits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_NOT_WORD = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")  # punctuation; an apostrophe only inside a word


def words(text: str) -> list[str]:
    """Lower case, punctuation removed ("and/or" is two words), split on whitespace."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def characters(text: str) -> list[str]:
    """Letters and digits only: spaces and punctuation removed, for scripts whose spacing varies (Korean)."""
    return [c for c in text.lower() if c.isalnum()]


@dataclass(frozen=True)
class Errors:
    """The edits that turn the reference into the hypothesis, and the reference's length."""

    substitutions: int
    deletions: int
    insertions: int
    reference: int

    @property
    def total(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.total / max(1, self.reference)


def align(reference: Sequence[str], hypothesis: Sequence[str]) -> list[tuple[int | None, int | None]]:
    """One minimum-edit alignment (Levenshtein), in order: (reference index, hypothesis index) pairs,
    None on the side a word is missing from (a deletion, or an insertion). Where several alignments
    are optimal, a substitution is preferred over a deletion plus an insertion."""
    rows = [list(range(len(hypothesis) + 1))]
    for i, ref_token in enumerate(reference, 1):
        above, row = rows[-1], [i]
        for j, hyp_token in enumerate(hypothesis, 1):
            row.append(min(above[j - 1] + (ref_token != hyp_token), above[j] + 1, row[j - 1] + 1))
        rows.append(row)
    pairs: list[tuple[int | None, int | None]] = []
    i, j = len(reference), len(hypothesis)
    while i or j:
        if i and j and rows[i][j] == rows[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            i, j = i - 1, j - 1
            pairs.append((i, j))
        elif i and rows[i][j] == rows[i - 1][j] + 1:
            i -= 1
            pairs.append((i, None))
        else:
            j -= 1
            pairs.append((None, j))
    return pairs[::-1]


def errors(reference: Sequence[str], hypothesis: Sequence[str]) -> Errors:
    """The edits of one minimum-edit alignment, by kind."""
    pairs = align(reference, hypothesis)
    deletions = sum(1 for _, h in pairs if h is None)
    insertions = sum(1 for r, _ in pairs if r is None)
    substitutions = sum(1 for r, h in pairs if r is not None and h is not None and reference[r] != hypothesis[h])
    return Errors(substitutions, deletions, insertions, len(reference))


def word_error_rate(reference: str, hypothesis: str) -> float:
    return errors(words(reference), words(hypothesis)).rate
