"""The public task API: the @task decorator, the Registry and the loader of TASK_MODULES."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tasks import (
    BUILTIN_MODULES,
    InvalidCheckpoint,
    InvalidParams,
    Registry,
    TaskModuleError,
    TaskType,
    load_registry,
    noop_checkpoint,
    task,
)


class Params(BaseModel):
    n: int = 1


class State(BaseModel):
    done: int = 0
    total: int = 0


def double(params: Params, resume: dict[str, Any] | None, checkpoint: Any) -> dict[str, Any]:
    """Double n.

    More text that is not part of the description.
    """
    checkpoint({"done": 1, "total": 2 * params.n}, 1.0)
    return {"double": 2 * params.n}


def test_decorator_returns_a_callable_task_type() -> None:
    declared = task("double", params=Params, state=State, never_decrease=("done",))(double)
    assert isinstance(declared, TaskType)
    assert (declared.name, declared.params_model, declared.state_model) == ("double", Params, State)
    assert declared.never_decrease == ("done",) and declared.module == __name__
    assert declared.description == "Double n."
    assert declared(declared.validate({"n": 4}), None, noop_checkpoint) == {"double": 8}
    assert declared.run is double


def test_description_can_be_given_and_a_docstring_is_optional() -> None:
    assert task("d", params=Params, description="Twice n")(double).description == "Twice n"
    assert task("d", params=Params)(lambda p, r, c: {}).description == ""


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"name": ""}, ValueError, "task name ''"),
        ({"name": "has space"}, ValueError, "task name 'has space'"),
        ({"name": "x" * 65}, ValueError, "task name"),
        ({"name": 7}, ValueError, "task name 7"),
        ({"params": dict}, TypeError, "params must be a pydantic BaseModel class"),
        ({"params": Params()}, TypeError, "params must be"),
        ({"state": {"done": 0}}, TypeError, "state must be"),
        ({"never_decrease": "done"}, TypeError, "tuple of field names"),
        ({"never_decrease": ("done", 3)}, TypeError, "tuple of field names"),
        ({"state": State, "never_decrease": ("done", "typo")}, ValueError, "['typo']"),
    ],
)
def test_declaration_mistakes_raise_at_import(
    kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    arguments: dict[str, Any] = {"name": "t", "params": Params, **kwargs}
    name = arguments.pop("name")
    with pytest.raises(error) as caught:
        task(name, **arguments)(double)
    assert words in str(caught.value)


@pytest.mark.parametrize("run", [lambda params: {}, lambda a, b, c, d: {}, "not a function"])
def test_run_must_take_params_resume_and_checkpoint(run: Any) -> None:
    with pytest.raises(TypeError, match="must take \\(params, resume, checkpoint\\)"):
        task("t", params=Params)(run)


def test_checkpoints_are_checked_against_the_declared_state() -> None:
    declared = task("t", params=Params, state=State, never_decrease=("done", "total"))(double)
    registry = Registry([declared])
    registry.check_checkpoint("t", {"done": 2, "total": 5}, {"done": 1, "total": 5})
    with pytest.raises(InvalidCheckpoint) as caught:
        registry.check_checkpoint("t", {"done": 0, "total": 5}, {"done": 1, "total": 5})
    assert caught.value.field == "state.done"
    with pytest.raises(InvalidCheckpoint) as caught:
        registry.check_checkpoint("t", {"done": "many"}, None)
    assert caught.value.field == "state.done"
    registry.check_checkpoint("unknown", {"anything": [1]}, {"anything": 9})  # nothing to check


def test_registry_lookup_and_validation() -> None:
    declared = task("t", params=Params)(double)
    registry = Registry([declared])
    assert registry.names == ("t",) and "t" in registry and list(registry) == [declared]
    assert registry.validate_task("t", {"n": 3}) == {"n": 3}
    with pytest.raises(InvalidParams, match="unknown task type 'u'; known: t"):
        registry.validate_task("u", {})


def test_registry_refuses_two_task_types_with_one_name() -> None:
    first = task("t", params=Params)(double)
    assert Registry([first, first]).names == ("t",)  # the same object twice is one type
    with pytest.raises(ValueError, match=f"'t' is already defined by {__name__}"):
        Registry([first, task("t", params=Params)(double)])


# The loader, with modules written to a temp directory on sys.path.


@pytest.fixture
def write_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], str]]:
    """Write a module into a temp package; return its import path. Unloaded afterwards."""
    package = f"modules_{tmp_path.name.replace('-', '_')}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / package / f"{name}.py").write_text(source)
        return f"{package}.{name}"

    yield write
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


MODULE = '''
from pydantic import BaseModel
from tasks import task

class P(BaseModel):
    x: int = 0

@task("{name}", params=P)
def {function}(params, resume, checkpoint):
    """A test task."""
    return {{"x": params.x}}
'''


def test_loader_adds_the_named_modules_to_the_builtins(write_module) -> None:
    first = write_module("one", MODULE.format(name="one", function="run"))
    second = write_module("two", MODULE.format(name="two", function="run")
                          + "from tasks.prime_task import primes\n")
    registry = load_registry([first, second, first])
    assert set(registry.names) == set(load_registry().names) | {"one", "two"}
    assert registry.get("two").module == second and registry.get("one").description == "A test task."
    assert registry.get("primes").module == BUILTIN_MODULES[0]  # re-exported, not redefined


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (MODULE.format(name="primes", function="run"),
         "TASK_MODULES: {module}: task type 'primes' is already defined by tasks.prime_task"),
        (MODULE.format(name="twice", function="a") + MODULE.format(name="twice", function="b"),
         "TASK_MODULES: {module}: task type 'twice' is already defined by {module}"),
        ("x = 1\n", "TASK_MODULES: {module} defines no task type (decorate a function with @task)"),
        ("import os\n\nraise RuntimeError('model\\nserver down')\n",
         "TASK_MODULES: {module} raised on import: RuntimeError: model server down ({path}, line 3)"),
        ("import no_such_dependency_here\n", "TASK_MODULES: {module} raised on import: "
         "ModuleNotFoundError: No module named 'no_such_dependency_here' ({path}, line 1)"),
        ("def broken(:\n", "TASK_MODULES: {module} raised on import: SyntaxError: "),
        (MODULE.format(name="bad name", function="run"),
         "TASK_MODULES: {module} raised on import: ValueError: "
         "task name 'bad name': must match"),
    ],
)
def test_load_errors_are_one_line_naming_the_module(
    write_module, tmp_path: Path, source: str, expected: str
) -> None:
    module = write_module("culprit", source)
    path = tmp_path / module.split(".")[0] / "culprit.py"
    with pytest.raises(TaskModuleError) as caught:
        load_registry([module])
    message = str(caught.value)
    assert message.startswith(expected.format(module=module, path=path)), message
    assert "\n" not in message and module in message


@pytest.mark.parametrize("name", ["no_such_module_xyz", "examples.no_such_module"])
def test_unknown_module_says_where_to_look(name: str) -> None:
    with pytest.raises(TaskModuleError) as caught:
        load_registry([name])
    assert str(caught.value) == (f"TASK_MODULES: no module named {name!r} (is it installed on "
                                 "this host, or on PYTHONPATH?)")


def test_split_and_combine_come_together() -> None:
    with pytest.raises(TypeError, match="split and combine together"):
        task("half", params=Params, split=lambda p, n: [{}])(double)
    with pytest.raises(TypeError, match="split and combine together"):
        task("half", params=Params, combine=lambda results: {})(double)
    plain = task("plain", params=Params)(double)
    assert not plain.splittable
    with pytest.raises(InvalidParams, match="cannot be split") as refused:
        plain.split_params({"n": 2}, 3)
    assert refused.value.field == "split"


def test_a_user_task_type_splits_and_combines() -> None:
    splits = task("sum_n", params=Params,
                  split=lambda p, n: [{"n": 1}] * min(n, p.n),
                  combine=lambda results: {"sum": sum(r["sum"] for r in results)})(
        lambda params, resume, checkpoint: {"sum": params.n})
    assert splits.splittable
    parts = splits.split_params({"n": 5}, 3)
    assert parts == [{"n": 1}] * 3
    results = [splits(splits.validate(p), None, noop_checkpoint) for p in parts]
    assert splits.combine([*results]) == {"sum": 3}
    too_many = task("bad_split", params=Params, split=lambda p, n: [{}] * (n + 1),
                    combine=lambda results: {})(double)
    with pytest.raises(ValueError, match="gave 4 parts"):
        too_many.split_params({}, 3)
