"""The test suite's settings: quick loops, short claims and backoffs, one prefix per test."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from automations.settings import Settings


def quick_settings(redis_url: str, prefix: str, data_dir: Path, **extra: Any) -> Settings:
    return Settings(
        redis_url=redis_url,
        prefix=prefix,
        data_dir=data_dir,
        consumer_name=f"test-{uuid.uuid4().hex[:6]}",
        block_ms=50,
        claim_idle_ms=500,
        claim_interval_s=0.2,
        trim_interval_s=0.5,
        reconnect_max_s=0.5,
        **extra,
    )
