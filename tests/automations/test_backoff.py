"""The shared outage policy: capped doubling delays, two log lines per outage (a WARNING, then
an INFO on recovery), deadlines."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from automations.backoff import Backoff, Outage, retry

log = logging.getLogger("tests.backoff")


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == log.name and text in r.getMessage()]


def test_delays_double_up_to_the_cap_and_start_over_after_a_success() -> None:
    backoff = Backoff("loop", first_s=0.1, cap_s=0.5, logger=log)
    gone = ConnectionError("gone")
    assert [backoff.next_delay(gone) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert backoff.failing
    backoff.recovered()
    assert not backoff.failing
    assert backoff.next_delay(gone) == 0.1
    backoff.reset()
    assert backoff.next_delay(gone) == 0.1


def test_an_outage_is_one_warning_and_one_recovery_however_many_tries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = Backoff("loop", logger=log, outage=Outage("loop", log, settle_s=0))
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(2):  # two outages: two pairs of lines
            for attempt in range(50):
                backoff.next_delay(ConnectionError(f"try {attempt}"))
            backoff.recovered()
            backoff.recovered()  # a success outside an outage says nothing
    down, up = lines(caplog, "Redis unreachable"), lines(caplog, "Redis reachable again")
    assert len(down) == len(up) == 2
    assert all(r.levelno == logging.WARNING for r in down)
    assert all(r.levelno == logging.INFO for r in up)  # a routine recovery
    assert "loop: Redis unreachable (ConnectionError: try 0)" in down[0].getMessage()


def test_failures_settling_after_a_recovery_are_not_a_new_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a restart each pooled connection to the old server fails once: the tail of the
    outage, not a new one; failures that go on past the settling time are."""
    outage = Outage("component", log, settle_s=0.2)
    first, second = (Backoff(w, logger=log, outage=outage) for w in ("first", "second"))
    with caplog.at_level(logging.INFO, logger=log.name):
        first.next_delay(ConnectionError("down"))
        second.next_delay(ConnectionError("down"))
        first.recovered()
        second.next_delay(ConnectionError("stale connection"))  # settling: quiet
        second.recovered()
        assert len(lines(caplog, "Redis unreachable")) == 1
        first.next_delay(ConnectionError("down again"))  # still settling
        time.sleep(0.25)
        first.next_delay(ConnectionError("down again"))  # lasts past it: a new outage
    down = lines(caplog, "Redis unreachable")
    assert len(down) == 2 and "down again" in down[1].getMessage()
    assert len(lines(caplog, "reachable again")) == 1


def test_a_long_outage_is_reminded_at_growing_intervals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = Backoff("loop", logger=log, outage=Outage("loop", log, remind_first_s=0.04))
    with caplog.at_level(logging.INFO, logger=log.name):
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            backoff.next_delay(ConnectionError("down"))
            time.sleep(0.002)
    still = lines(caplog, "still unreachable")
    assert 2 <= len(still) <= 3  # after 0.04 s, 0.12 s, 0.28 s: not one per try
    assert all(r.levelno == logging.WARNING for r in still)


def test_a_failure_the_caller_reports_slows_down_without_an_outage_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = Backoff("loop", first_s=0.1, cap_s=1.0, logger=log)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        delays = [backoff.next_delay(ValueError("bug"), outage=False) for _ in range(3)]
        backoff.recovered()
    assert delays == [0.1, 0.2, 0.4]
    assert not [r for r in caplog.records if r.name == log.name]


async def test_retry_returns_once_the_call_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError("gone")
        return "ok"

    with caplog.at_level(logging.INFO, logger=log.name), anyio.fail_after(5):
        assert await retry(flaky, Backoff("flaky", first_s=0.001, logger=log)) == "ok"
    assert calls == 4
    assert len(lines(caplog, "Redis unreachable")) == len(lines(caplog, "reachable again")) == 1


async def test_retry_gives_up_after_its_deadline_with_the_last_error() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"try {calls}")

    started = time.monotonic()
    with anyio.fail_after(5), pytest.raises(ConnectionError) as raised:
        await retry(down, Backoff("down", first_s=0.01, cap_s=0.05, logger=log), deadline_s=0.2)
    assert time.monotonic() - started < 1.0  # gives up at the deadline, not later
    assert calls > 2
    assert str(raised.value) == f"try {calls}"


async def test_retry_lets_other_errors_through_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await retry(broken, Backoff("broken", logger=log))
    assert calls == 1


async def test_wait_returns_early_once_stopping_is_set() -> None:
    backoff = Backoff("stopping", first_s=60.0, cap_s=60.0, logger=log)
    stopping = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(backoff.wait, ConnectionError("gone"), stopping)
            stopping.set()
        await backoff.wait(ConnectionError("gone"), stopping)  # already set: no sleep
    assert backoff.attempts == 2
