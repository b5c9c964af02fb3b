"""Running a long-lived worker (a stream consumer, the engine, the dispatcher) until a stop
signal, so that it finishes the work in hand instead of being cancelled mid-batch."""

from __future__ import annotations

from typing import Protocol

import anyio


class Runner(Protocol):
    async def run(self) -> None:
        """Work until ``stop()``; then finish what is in hand and return."""
        ...

    def stop(self) -> None: ...


async def run_until(stopping: anyio.Event, runner: Runner) -> None:
    """Run ``runner`` until ``stopping`` is set, then ask it to stop and wait for it."""
    async with anyio.create_task_group() as tg:
        async def stop_when_asked() -> None:
            await stopping.wait()
            runner.stop()

        tg.start_soon(stop_when_asked)
        await runner.run()
        tg.cancel_scope.cancel()
