"""Quick-start flows: ``extract`` loads some rows, ``report`` summarises them.

Run one directly (``python examples/flows.py``) and watch its events with
``automations events tail``; or deploy both (``automations deployments apply
examples/deployments.yaml``) and let a worker run them.
"""

from __future__ import annotations

import random

from automations import flow, task


@task(retries=2, retry_delay_seconds=1)
def fetch(source: str) -> list[int]:
    """Pretend to read a file: a list of row sizes."""
    return [random.randint(1, 100) for _ in range(10)]


@task
def keep_valid(rows: list[int], minimum: int) -> list[int]:
    return [r for r in rows if r >= minimum]


@flow(name="extract", tags=["etl"])
def extract(source: str = "s3://bucket/data.csv", minimum: int = 10, fail: bool = False) -> int:
    """Load ``source``; ``fail=True`` makes the run fail (to try the failure automation)."""
    if fail:
        raise RuntimeError(f"cannot read {source}")
    return len(keep_valid(fetch(source), minimum))


@flow(name="report", tags=["etl", "reporting"])
def report(upstream: str, audience: str = "team") -> str:
    """Summarise what the ``upstream`` flow run produced."""
    line = f"report for {audience}: upstream run {upstream} completed"
    print(line)
    return line


if __name__ == "__main__":
    extract()
