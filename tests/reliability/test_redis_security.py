"""A production Redis: an ACL user with only the rights the services need, and TLS (on one
server and on a Redis Cluster). Each runs the whole chain (engine, announcer, dispatcher, a
webhook) against real redis-servers configured that way; the password never shows in logs or
errors."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from actions.models import CallWebhook
from automations.connection import connect
from automations.events import Event
from automations.keys import Keys
from automations.service import serve
from automations.settings import Settings
from automations.store import AutomationStore
from automations.streams.publish import Publisher
from bench.redis_cluster import ClusterTls, LocalCluster
from bench.redis_server import RedisServer, free_port
from tests.automations.engine_harness import automation
from tests.sinks import HttpSink

PASSWORD = "s3cret-Pa55word"

# The rights the services need, and no more: their own keys, streams, scripts and INFO (the
# version check); no admin, no FLUSHALL, no CONFIG, no KEYS.
SERVICE_ACL = (
    "automations on >{password} ~{prefix}:* resetchannels "
    "+@read +@write +@stream +@scripting +@connection +@transaction -@dangerous +info"
)


def acl_args(prefix: str) -> list[str]:
    """redis-server reads ``--user NAME RULE...`` as one config line, a token per word."""
    return ["--user", "default", "off",
            "--user", *SERVICE_ACL.format(password=PASSWORD, prefix=prefix).split()]


@pytest.fixture
def acl_redis(tmp_path: Path, prefix: str) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "acl", extra=acl_args(prefix))
    server.start()
    yield server
    server.stop()


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr",
                                                 "server.crt", "ext.cnf")}
    paths["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(paths["ca.key"]), "-out", str(paths["ca.crt"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(paths["server.key"]), "-out", str(paths["server.csr"]))
    run("x509", "-req", "-in", str(paths["server.csr"]), "-CA", str(paths["ca.crt"]),
        "-CAkey", str(paths["ca.key"]), "-CAcreateserial", "-days", "2",
        "-extfile", str(paths["ext.cnf"]), "-out", str(paths["server.crt"]))
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path, prefix: str) -> Iterator[tuple[RedisServer, int, Path]]:
    certs = make_certs(tmp_path / "certs")
    tls_port = free_port()
    server = RedisServer(tmp_path / "tls", extra=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(certs["server.crt"]),
        "--tls-key-file", str(certs["server.key"]), "--tls-ca-cert-file", str(certs["ca.crt"]),
        "--tls-auth-clients", "no", *acl_args(prefix),
    ])
    server.start()
    yield server, tls_port, certs["ca.crt"]
    server.stop()


async def fires_a_webhook(settings: Settings, sink: HttpSink) -> None:
    """Store a webhook automation, run every service, emit an event: the webhook is called."""
    keys = Keys.from_settings(settings)
    client: aioredis.Redis = connect(settings)
    try:
        hook = CallWebhook(url=sink.url("/secure"), payload='{"event": "{{ event.id }}"}')
        await AutomationStore(client, keys).apply([automation(
            {"posture": "Reactive", "expect": ["secure.ping"]}, name="secure",
            actions=[hook.model_dump(mode="json")])])
        stopping = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(settings, ["engine", "timer", "dispatcher"],
                                        stopping=stopping))
            event = Event(event="secure.ping", resource={"prefect.resource.id": "r"})
            await Publisher(client, settings).publish([event])
            [request] = await sink.wait_for(1, "/secure", timeout=20)
            assert request.json() == {"event": str(event.id)}
            stopping.set()
    finally:
        await client.aclose()


async def test_an_acl_user_with_the_documented_rights_runs_everything(
    acl_redis: RedisServer, settings: Settings, http_sink: HttpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://automations:{PASSWORD}@127.0.0.1:{acl_redis.port}/0"
    caplog.set_level(logging.DEBUG)
    await fires_a_webhook(settings.model_copy(update={"redis_url": url}), http_sink)
    assert PASSWORD not in caplog.text


async def test_a_wrong_password_is_refused_without_showing_it(
    acl_redis: RedisServer, settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "not-the-Pa55word"
    bad = settings.model_copy(update={
        "redis_url": f"redis://automations:{wrong}@127.0.0.1:{acl_redis.port}/0"})
    client = connect(bad)
    with pytest.raises(Exception) as refused:
        await Publisher(client, bad).publish([Event(event="x", resource={
            "prefect.resource.id": "r"})])
    await client.aclose()
    assert wrong not in str(refused.value) and wrong not in caplog.text


async def test_tls_with_a_verified_certificate_runs_everything(
    tls_redis: tuple[RedisServer, int, Path], settings: Settings, http_sink: HttpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, tls_port, ca = tls_redis
    url = (f"rediss://automations:{PASSWORD}@127.0.0.1:{tls_port}/0"
           f"?ssl_ca_certs={ca}&ssl_cert_reqs=required")
    caplog.set_level(logging.DEBUG)
    await fires_a_webhook(settings.model_copy(update={"redis_url": url}), http_sink)
    assert PASSWORD not in caplog.text


async def test_tls_refuses_a_server_it_cannot_verify(
    tls_redis: tuple[RedisServer, int, Path], settings: Settings,
) -> None:
    _, tls_port, _ = tls_redis
    url = f"rediss://automations:{PASSWORD}@127.0.0.1:{tls_port}/0?ssl_cert_reqs=required"
    client = connect(settings.model_copy(update={"redis_url": url}))
    with pytest.raises(Exception, match=r"(?i)certificate"):
        await client.ping()
    await client.aclose()


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster serving TLS (its bus over TLS too)."""
    certs = make_certs(tmp_path / "certs")
    tls = ClusterTls(cert=certs["server.crt"], key=certs["server.key"], ca=certs["ca.crt"])
    with LocalCluster(tmp_path / "cluster", 3, tls=tls) as cluster:
        yield cluster


async def test_tls_on_a_cluster_runs_everything(
    tls_cluster: LocalCluster, settings: Settings, http_sink: HttpSink,
) -> None:
    """A ``rediss://`` URL of one node: the cluster client reaches every master over TLS,
    verified, and the whole chain runs on three partitions."""
    on_cluster = settings.model_copy(update={
        "redis_url": tls_cluster.tls_url(), "redis_cluster": True, "partitions": 3})
    await fires_a_webhook(on_cluster, http_sink)
    client = connect(on_cluster)
    try:
        assert await client.ping()  # the client learns the masters from the node it reaches
        nodes = {node.port for node in client.get_nodes()}  # type: ignore[attr-defined]
    finally:
        await client.aclose()
    assert nodes == set(tls_cluster.tls_ports)


async def test_tls_on_a_cluster_refuses_a_node_it_cannot_verify(
    tls_cluster: LocalCluster, settings: Settings,
) -> None:
    unverified = settings.model_copy(update={
        "redis_url": tls_cluster.tls_url(verify=False), "redis_cluster": True,
        "partitions": 3})
    client = connect(unverified)
    with pytest.raises(Exception, match=r"(?i)certificate"):
        await client.ping()
    await client.aclose()
