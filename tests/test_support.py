"""The shared test helpers of tests/conftest.py: waiting and skipping behave as promised."""

from __future__ import annotations

import time

import pytest

from auditpy.system import evloop

from .conftest import WaitTimeout, missing, need, needs, wait_for, wait_for_async


def test_wait_for_returns_the_first_true_value() -> None:
    values = iter([0, "", None, [3], [4]])
    assert wait_for(lambda: next(values), 5, interval=0) == [3]


def test_wait_for_raises_naming_what_the_last_value_and_the_context() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        wait_for(lambda: [], 0.1, "the moon", interval=0.01, context=lambda: "log tail")
    assert time.monotonic() - started >= 0.1
    message = str(info.value)
    assert message.startswith("timed out after 0.1 s waiting for the moon (last value: [])")
    assert message.endswith("\nlog tail")
    assert isinstance(info.value, AssertionError)  # a failed test, not an error


def test_wait_for_looks_once_more_at_the_deadline() -> None:
    """A condition that comes true while the last interval runs is not a timeout."""
    deadline = time.monotonic() + 0.05
    assert wait_for(lambda: time.monotonic() >= deadline, 0.05, interval=0.1)


def test_wait_for_async_lets_the_loop_run() -> None:
    async def scenario() -> str:
        done: list[str] = []
        evloop.running_loop().call_later(0.02, done.append, "ran")
        return (await wait_for_async(lambda: done, 5))[0]

    assert evloop.run(scenario()) == "ran"
    with pytest.raises(WaitTimeout, match="waiting for nothing"):
        evloop.run(wait_for_async(lambda: False, 0.05, "nothing"))


def test_missing_names_the_program_and_its_package() -> None:
    assert missing("sh") is None
    assert missing("/bin/sh") is None
    assert missing("surely-no-such-program-here") == (
        "needs surely-no-such-program-here, which is not installed here")
    assert missing("/nonexistent/gcc") == "needs /nonexistent/gcc, which is not installed here"
    assert "/etc/passwd" in (missing("/etc/passwd") or "")  # there, but not a program


def test_needs_and_need_skip_with_the_reason() -> None:
    mark = needs("sh", "surely-no-such-program-here")
    assert mark.args == (True,)
    assert mark.kwargs["reason"] == "needs surely-no-such-program-here, which is not installed here"
    assert needs("sh").args == (False,)
    with pytest.raises(pytest.skip.Exception, match="needs surely-no-such-program-here"):
        need("surely-no-such-program-here")
    need("sh")  # here: nothing happens
