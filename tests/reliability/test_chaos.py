"""The short chaos run in CI: the same faults and checks as ``python -m
tests.reliability.chaos --long`` (``tests/reliability/chaos.py``), at a tenth of the events."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.chaos import run
from tests.reliability.chaos_load import SHORT


@pytest.mark.timeout(300)
async def test_kills_stalls_a_redis_restart_and_bad_input_lose_and_repeat_nothing(
    tmp_path: Path,
) -> None:
    report = await run(SHORT, tmp_path / "chaos")
    assert not report.failures, report.text()
