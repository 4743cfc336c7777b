"""The example task module examples.wordcount: counts, chunking, resume, validation, loading."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples import wordcount as module
from examples.wordcount import wordcount
from tasks import InvalidCheckpoint, InvalidParams, TaskInterrupted, load_registry, noop_checkpoint


def run(params: dict[str, Any], resume: dict[str, Any] | None = None,
        checkpoint: Any = noop_checkpoint) -> dict[str, Any]:
    """Validate and run a wordcount task."""
    return wordcount(wordcount.validate(params), resume, checkpoint)


def without_elapsed(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key != "elapsed_seconds"}


class Recorder:
    """A checkpoint callback keeping each state as JSON text; may interrupt at call n."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.texts: list[str] = []
        self.progress: list[float] = []
        self.interrupt_at = interrupt_at

    def __call__(self, state: dict[str, Any], progress: float) -> None:
        self.texts.append(json.dumps(state))
        self.progress.append(progress)
        if self.interrupt_at is not None and len(self.texts) >= self.interrupt_at:
            raise TaskInterrupted


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few characters, so short texts span many checkpoints."""
    monkeypatch.setattr(module, "CHUNK_CHARS", 7)


def test_counts_words_case_insensitively_most_frequent_first() -> None:
    result = run({"text": "The cat and the hat.\nTHE END; the end?", "top": 3})
    assert without_elapsed(result) == {
        "words": 9, "distinct": 5, "top": [["the", 4], ["end", 2], ["and", 1]]}


def test_words_keep_inner_apostrophes_and_unicode_letters() -> None:
    result = run({"text": "Don't stop: l'eau, L'EAU! naïve café_bar 42 'quoted' -- __"})
    assert dict(result["top"]) == {"don't": 1, "stop": 1, "l'eau": 2, "naïve": 1, "café": 1,
                                   "bar": 1, "42": 1, "quoted": 1}
    assert result["words"] == 9


def test_empty_text_has_no_words() -> None:
    assert without_elapsed(run({"text": ""})) == {"words": 0, "distinct": 0, "top": []}
    assert without_elapsed(run({"text": " \n\t "})) == {"words": 0, "distinct": 0, "top": []}


@pytest.mark.usefixtures("small_chunks")
@settings(max_examples=50, deadline=None)
@given(
    words=st.lists(st.from_regex(r"[abcAB]{1,4}('[abcAB]{1,4})?", fullmatch=True), max_size=60),
    separators=st.lists(st.sampled_from([" ", "\n", "\t", "  ", " \r\n"]), min_size=1),
)
def test_chunk_boundaries_never_cut_a_word(words: list[str], separators: list[str]) -> None:
    text = "".join(w + separators[i % len(separators)] for i, w in enumerate(words))
    expected = Counter(w.casefold() for w in text.split())
    result = run({"text": text, "top": 1000})
    assert result["words"] == sum(expected.values()) and result["distinct"] == len(expected)
    assert dict(result["top"]) == expected


@pytest.mark.usefixtures("small_chunks")
def test_resume_from_any_checkpoint_gives_the_same_result() -> None:
    params = {"text": "one two three two three three " * 20 + "four", "top": 4}
    recorder = Recorder()
    expected = without_elapsed(run(params, checkpoint=recorder))
    assert expected["top"] == [["three", 60], ["two", 40], ["one", 20], ["four", 1]]
    states = [json.loads(text) for text in recorder.texts]
    assert len(states) > 10 and recorder.progress == sorted(recorder.progress)
    assert recorder.progress[-1] == 1.0
    for previous, state in zip(states, states[1:]):
        wordcount.check_checkpoint(state, previous)  # what the dispatcher checks: all accepted
    for state in states:
        assert without_elapsed(run(params, resume=state)) == expected


@pytest.mark.usefixtures("small_chunks")
def test_interrupting_checkpoint_stops_the_task() -> None:
    recorder = Recorder(interrupt_at=2)
    with pytest.raises(TaskInterrupted):
        run({"text": "a b c d e f g h i j k l m n o p"}, checkpoint=recorder)
    assert len(recorder.texts) == 2


def test_dispatcher_refuses_a_checkpoint_going_back_or_malformed() -> None:
    previous = {"offset": 100, "words": 20, "counts": {"a": 20}, "elapsed_seconds": 1.0}
    with pytest.raises(InvalidCheckpoint) as caught:
        wordcount.check_checkpoint(previous | {"offset": 50}, previous)
    assert caught.value.field == "state.offset"
    with pytest.raises(InvalidCheckpoint) as caught:
        wordcount.check_checkpoint(previous | {"words": 19, "offset": 200}, previous)
    assert caught.value.field == "state.words"
    with pytest.raises(InvalidCheckpoint) as caught:
        wordcount.check_checkpoint(previous | {"counts": ["a"]}, None)
    assert caught.value.field == "state.counts"


def test_resume_state_of_another_text_is_refused() -> None:
    state = {"offset": 500, "words": 1, "counts": {"x": 1}, "elapsed_seconds": 0.0}
    with pytest.raises(ValueError, match="resume state"):
        run({"text": "short"}, resume=state)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params.text"),
        ({"text": 5}, "params.text"),
        ({"text": "x" * (module.MAX_TEXT_CHARS + 1)}, "params.text"),
        ({"text": "x", "top": 0}, "params.top"),
        ({"text": "x", "top": "3"}, "params.top"),
        ({"text": "x", "lang": "en"}, "params.lang"),
    ],
)
def test_invalid_params_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        wordcount.validate(params)
    assert caught.value.field == field


def test_loaded_by_name_with_its_docstring_as_description() -> None:
    registry = load_registry(["examples.wordcount"])
    assert registry.get("wordcount") is wordcount
    assert wordcount.description == "Count the words of a text (case-insensitive); the most " \
                                    "frequent ones first."
    assert wordcount.never_decrease == ("offset", "words")
