"""Real ``automations serve`` / ``automations worker`` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from automations.settings import Settings


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a child process pointed at the test Redis and prefix, with quick loops."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATIONS_")}
    env.update({
        "AUTOMATIONS_REDIS_URL": str(settings.redis_url),
        "AUTOMATIONS_PREFIX": settings.prefix,
        "AUTOMATIONS_BLOCK_MS": "50",
        "AUTOMATIONS_CLAIM_INTERVAL_S": "0.2",
        "AUTOMATIONS_SCHEDULER_INTERVAL_S": "0.2",
        "AUTOMATIONS_WORKER_POLL_S": "0.2",
        "AUTOMATIONS_SHUTDOWN_TIMEOUT_S": "3",
        "AUTOMATIONS_WORKER_CANCEL_GRACE_S": "1",
        "AUTOMATIONS_ACTION_RETRY_BASE_S": "0.1",
        "AUTOMATIONS_PARTITIONS": str(settings.partitions),
    })
    if settings.redis_cluster:
        env["AUTOMATIONS_REDIS_CLUSTER"] = "true"
    env.update(extra)
    return env


@contextmanager
def running(
    args: list[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m automations <args>``, stopped with SIGTERM (then SIGKILL) on exit; its output
    goes to ``log``, which is printed if the test fails."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "automations", *args], env=dict(env),
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            print(f"--- {' '.join(args)} output ---\n{log.read_text(errors='replace')[-5000:]}")
