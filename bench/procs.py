"""Services under test run in their own processes, as in production, driven by a tiny protocol:
the child prints one JSON line ``{"ready": ...}`` once set up, waits for ``go`` on stdin, runs
until SIGTERM, then prints ``{"stopped": ...}`` and exits. This module is both sides."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson

from automations.service import ServiceContext, ServiceFn
from automations.settings import Settings
from bench.harness import CACHE_DIR, rss_bytes

Message = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent  # the repository: ``-m bench.<child>`` from here


# -- parent side --------------------------------------------------------------------------------
class ServiceProcess:
    """One child ``python -m <module> <args>``; its stderr goes to a log file for post-mortems."""

    def __init__(self, module: str, args: list[str], *, name: str) -> None:
        self.module, self.args, self.name = module, args, name
        self.log = CACHE_DIR / "logs" / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: Message = {}
        self.released = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 120.0) -> Message:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, *self.args, cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
        self.ready = await self._read(timeout)
        return self.ready

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.released = True

    async def stop(self, timeout: float = 60.0) -> Message:
        """SIGTERM, then the child's last message (``{}`` if it died without one)."""
        if self.proc is None or self.proc.returncode is not None:
            return {}
        if not self.released and self.proc.stdin is not None:
            self.proc.stdin.close()  # never released: it exits on end of input
            await asyncio.wait_for(self.proc.wait(), timeout)
            self.log.unlink(missing_ok=True)
            return {}
        self.proc.send_signal(signal.SIGTERM)
        try:
            message = await self._read(timeout)
            await asyncio.wait_for(self.proc.wait(), timeout)
            if self.proc.returncode == 0:
                self.log.unlink(missing_ok=True)  # keep the logs of failures only
            return message
        except (TimeoutError, RuntimeError):
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            return {}

    def rss(self) -> int:
        return rss_bytes(self.pid)

    async def _read(self, timeout: float) -> Message:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            await self.proc.wait()
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.tail()}")
        message: Message = orjson.loads(line)
        return message

    def tail(self, lines: int = 6) -> str:
        try:
            return " / ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def stop_all(processes: list[ServiceProcess]) -> list[Message]:
    return list(await asyncio.gather(*(p.stop() for p in processes)))


# -- child side ---------------------------------------------------------------------------------
def say(**message: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


async def wait_for_go() -> None:
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(0)


async def wait_for_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def own_rss() -> int:
    return rss_bytes(os.getpid())


def read_json(path: str) -> Any:
    return orjson.loads(Path(path).read_bytes())


def child_arguments(prog: str, consumer: str, *, automations: bool) -> argparse.ArgumentParser:
    """The arguments every child takes; ``automations`` adds ``--automations`` and
    ``--batch-size``."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--consumer", default=consumer)
    parser.add_argument("--partitions", type=int, default=1,
                        help="the installation's partitions (its outboxes)")
    parser.add_argument("--cluster", action="store_true",
                        help="the Redis is a cluster (AUTOMATIONS_REDIS_CLUSTER=true)")
    if automations:
        parser.add_argument("--automations", required=True, help="JSON list of automations")
        parser.add_argument("--batch-size", type=int, default=None,
                            help="entries per XREADGROUP (default: the Settings default)")
    return parser


def child_settings(args: argparse.Namespace) -> Settings:
    batch_size = getattr(args, "batch_size", None)
    extra = {"batch_size": batch_size} if batch_size else {}
    return Settings(redis_url=args.redis_url, prefix=args.prefix, partitions=args.partitions,
                    redis_cluster=args.cluster, consumer_name=args.consumer, block_ms=50,
                    **extra)


async def _run(service: ServiceFn, ctx: ServiceContext) -> None:
    await service(ctx)


async def serve_until_signal(service: ServiceFn, ctx: ServiceContext) -> None:
    """Run one service after ``go`` until SIGTERM, then let it drain and report."""
    await wait_for_go()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_run, service, ctx)
        await wait_for_signal()
        ctx.stopping.set()
    say(stopped=True, rss=own_rss())
