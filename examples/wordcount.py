"""An example task module: word frequencies of a text, resumable chunk by chunk.

Load it with ``TASK_MODULES=examples.wordcount`` on every worker and dispatcher, then submit
``{"task_type": "wordcount", "params": {"text": "...", "top": 5}}``. It shows the parts of
the task API (see the README, "Writing a task"): a params model, a checkpoint state model,
fields that never decrease, and a result that is the same however often the task resumes.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks import CheckpointFn, Stopwatch, task

MAX_TEXT_CHARS = 60_000
"""Longest accepted text; the dispatcher's MAX_PARAMS_BYTES (64 KiB of JSON by default) may
refuse a shorter one first (a non-ASCII character takes 6 bytes of JSON)."""

CHUNK_CHARS = 4096
"""Characters counted between two checkpoint calls (well under a millisecond of work)."""

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
"""A word: letters or digits, with inner apostrophes (don't, l'eau)."""

WHITESPACE = re.compile(r"\s")


class WordCountParams(BaseModel):
    """Parameters of a ``wordcount`` task."""

    model_config = ConfigDict(strict=True, extra="forbid")

    text: str = Field(max_length=MAX_TEXT_CHARS)
    top: int = Field(default=10, ge=1, le=1000)


class WordCountState(BaseModel):
    """Resume state: the counts of the words in ``text[:offset]``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    offset: int = Field(default=0, ge=0)
    words: int = Field(default=0, ge=0)
    counts: dict[str, int] = Field(default_factory=dict)
    elapsed_seconds: float = Field(default=0.0, ge=0)


@task("wordcount", params=WordCountParams, state=WordCountState,
      never_decrease=("offset", "words"))
def wordcount(
    params: WordCountParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
) -> dict[str, Any]:
    """Count the words of a text (case-insensitive); the most frequent ones first."""
    state = WordCountState.model_validate(resume or {})
    if state.offset > len(params.text):
        raise ValueError("resume state does not belong to this text")
    counts = Counter(state.counts)
    stopwatch = Stopwatch(state.elapsed_seconds)
    while state.offset < len(params.text):
        end = chunk_end(params.text, state.offset)
        found = [word.casefold() for word in WORD.findall(params.text, state.offset, end)]
        counts.update(found)
        state = WordCountState(offset=end, words=state.words + len(found), counts=dict(counts),
                               elapsed_seconds=stopwatch.seconds())
        checkpoint(state.model_dump(), end / len(params.text))
    return {
        "words": state.words,
        "distinct": len(counts),
        "top": [[word, n] for word, n in sorted(counts.items(), key=_by_frequency)[: params.top]],
        "elapsed_seconds": stopwatch.seconds(),
    }


def chunk_end(text: str, start: int) -> int:
    """About CHUNK_CHARS after start, at a whitespace character so that no word is cut."""
    boundary = WHITESPACE.search(text, start + CHUNK_CHARS)
    return boundary.start() if boundary else len(text)


def _by_frequency(item: tuple[str, int]) -> tuple[int, str]:
    """Most frequent first; ties in alphabetical order, so the result never depends on a resume."""
    return -item[1], item[0]
