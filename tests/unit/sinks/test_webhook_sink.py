"""The ``webhook`` sink against real aiohttp receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from monitor.core.errors import ConfigError, SinkError
from monitor.core.secret import Secret
from monitor.sinks import Sink, create_sink
from monitor.sinks.webhook import SigningKey, WebhookSink, make_webhook_sink
from monitor.testing import Receiver, Reply, make_event, webhook_signature

KEY = b"0123456789abcdef-the-signing-key!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
FAST = {"backoff_initial": 0.001, "backoff_max": 0.01, "rate": 1000}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Answers from ``receiver.script`` (then 200) and records every request."""
    async with Receiver() as rec:
        yield rec


@pytest.fixture
async def sinks() -> AsyncIterator[list[WebhookSink]]:
    """Collects sinks made in a test and closes them at the end (an unclosed session would warn)."""
    made: list[WebhookSink] = []
    yield made
    for sink in made:
        await sink.aclose()


def build(sinks: list[WebhookSink], url: str, **options: object) -> WebhookSink:
    sink = make_webhook_sink(url, {**FAST, **options})
    sinks.append(sink)
    return sink


async def test_posts_the_event_json_signed(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    sink = build(sinks, receiver.url, secret=SECRET, headers={"X-Team": "infra"})
    event = make_event()
    await sink.send(event)
    [seen] = receiver.requests
    assert seen.body == event.to_json()
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"].startswith("cce-monitor/")
    assert seen.headers["X-Team"] == "infra"
    assert seen.headers["webhook-id"] == event.id
    timestamp = seen.headers["webhook-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    assert seen.headers["webhook-signature"] == webhook_signature(SECRET, event.id, timestamp, seen.body)


async def test_plain_secret_uses_its_utf8_bytes(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    sink = build(sinks, receiver.url, secret="plain-shared-secret")
    event = make_event()
    await sink.send(event)
    [seen] = receiver.requests
    digest = hmac.new(
        b"plain-shared-secret",
        f"{event.id}.{seen.headers['webhook-timestamp']}.".encode() + seen.body,
        hashlib.sha256,
    ).digest()
    assert seen.headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


async def test_without_secret_sends_id_and_timestamp(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    sink = create_sink(f"webhook:{receiver.url}", FAST)
    assert isinstance(sink, WebhookSink) and isinstance(sink, Sink)
    sinks.append(sink)
    await sink.send(make_event())
    [seen] = receiver.requests
    assert seen.headers["webhook-id"] == make_event().id
    assert seen.headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in seen.headers


async def test_retries_on_500_then_succeeds(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    receiver.script = [Reply(500), Reply(503)]
    sink = build(sinks, receiver.url, secret=SECRET)
    await sink.send(make_event())
    assert len(receiver.requests) == 3
    assert {s.headers["webhook-id"] for s in receiver.requests} == {make_event().id}
    for seen in receiver.requests:  # each attempt is signed with its own timestamp
        assert seen.headers["webhook-signature"] == webhook_signature(
            SECRET, seen.headers["webhook-id"], seen.headers["webhook-timestamp"], seen.body
        )


async def test_429_retry_after_is_honoured(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    receiver.script = [Reply(429, headers={"Retry-After": "0.2"})]
    sink = build(sinks, receiver.url)
    await sink.send(make_event())
    assert len(receiver.requests) == 2
    assert receiver.requests[1].at - receiver.requests[0].at >= 0.2
    assert sink.limiter.throttled_count == 1


async def test_400_is_not_retried(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    receiver.script = [Reply(400, body='{"message": "bad payload"}')]
    sink = build(sinks, receiver.url)
    with pytest.raises(SinkError) as info:
        await sink.send(make_event())
    assert not info.value.retryable
    assert "HTTP 400" in str(info.value) and "bad payload" in str(info.value)
    assert len(receiver.requests) == 1


async def test_redirect_is_not_followed(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    receiver.script = [Reply(307, headers={"Location": "/elsewhere"})]
    sink = build(sinks, receiver.url)
    with pytest.raises(SinkError) as info:
        await sink.send(make_event())
    assert not info.value.retryable
    assert len(receiver.requests) == 1


async def test_410_disables_the_endpoint(
    receiver: Receiver, sinks: list[WebhookSink], caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [Reply(410)]
    sink = build(sinks, receiver.url)
    with caplog.at_level(logging.WARNING, logger="monitor.sinks.webhook"):
        for _ in range(3):
            with pytest.raises(SinkError) as info:
                await sink.send(make_event())
            assert not info.value.retryable
    assert len(receiver.requests) == 1
    assert sink.disabled
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "410" in warnings[0].getMessage()


async def test_timeout_is_retried(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    receiver.script = [Reply(delay=5.0)]
    sink = build(sinks, receiver.url, timeout=0.1)
    await sink.send(make_event())
    assert len(receiver.requests) == 2


async def test_gives_up_after_max_attempts(receiver: Receiver, sinks: list[WebhookSink]) -> None:
    receiver.script = [Reply(502)] * 10
    sink = build(sinks, receiver.url, max_attempts=3)
    with pytest.raises(SinkError) as info:
        await sink.send(make_event())
    assert info.value.retryable
    assert "3 attempts" in str(info.value) and "HTTP 502" in str(info.value)
    assert len(receiver.requests) == 3


async def test_connection_refused_is_retried_then_gives_up(sinks: list[WebhookSink]) -> None:
    # A port that was just free: nothing listens there.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    sink = build(sinks, f"http://127.0.0.1:{port}/hook", max_attempts=2)
    with pytest.raises(SinkError) as info:
        await sink.send(make_event())
    assert info.value.retryable and "2 attempts" in str(info.value)


async def test_secrets_never_leak(
    receiver: Receiver, sinks: list[WebhookSink], caplog: pytest.LogCaptureFixture
) -> None:
    token = "query-token-xyzzy"
    password = "url-password-plugh"
    bearer = "Bearer header-value-frobozz"
    credentials = f"user:{password}@"
    url = receiver.url.replace("http://", "http://" + credentials) + f"?token={token}"
    secrets = [SECRET, SECRET.removeprefix("whsec_"), token, password, bearer]
    caplog.set_level(logging.DEBUG)
    errors: list[SinkError] = []

    sink = build(sinks, url, secret=SECRET, headers={"X-Api-Key": bearer}, max_attempts=2, timeout=0.1)
    assert sink.name == "webhook:" + receiver.url
    # 500 then a timeout (gives up), 400, a 503 whose body echoes the token then 410, then disabled.
    receiver.script = [Reply(500), Reply(delay=5.0), Reply(400), Reply(503, body=f"echo {token}"), Reply(410)]
    for _ in range(4):
        with pytest.raises(SinkError) as info:
            await sink.send(make_event())
        errors.append(info.value)
    assert len(receiver.requests) == 5

    refused = build(sinks, f"http://{credentials}127.0.0.1:1/hook?token={token}", secret=SECRET, max_attempts=2)
    with pytest.raises(SinkError) as info:
        await refused.send(make_event())
    errors.append(info.value)

    # Our own log lines only: the receiver's access log (aiohttp.access) naturally shows its request line.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("monitor"))
    texts = [repr(sink), str(sink), sink.name, repr(sink.settings), repr(refused), ours]
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    for secret in secrets:
        for text in texts:
            assert secret not in text
    assert "timed out" in str(errors[0]) and "HTTP 400" in str(errors[1]) and "410" in str(errors[2])


def test_error_texts_from_aiohttp_are_scrubbed() -> None:
    # aiohttp puts the full request URL into some messages ("Connection timeout to host <url>").
    url = "https://user:pw-secret-1@example.com/hook?token=tok-secret-2"
    sink = make_webhook_sink(url, {})
    text = sink._describe(aiohttp.ConnectionTimeoutError(f"Connection timeout to host {URL(url)}"))
    assert text == "ConnectionTimeoutError: Connection timeout to host https://example.com/hook"


@pytest.mark.parametrize(
    ("target", "options", "match"),
    [
        (None, {}, "URL is required"),
        ("ftp://example.com/x", {}, "http"),
        ("http:///path-only", {}, "host"),
        ("https://example.com/h", {"retries": 3}, "'retries'"),
        ("https://example.com/h", {"timeout": "10"}, "'timeout'"),
        ("https://example.com/h", {"timeout": 0}, "'timeout'"),
        ("https://example.com/h", {"max_attempts": 0}, "'max_attempts'"),
        ("https://example.com/h", {"max_attempts": 2.5}, "'max_attempts'"),
        ("https://example.com/h", {"rate": -1}, "'rate'"),
        ("https://example.com/h", {"backoff_initial": 5, "backoff_max": 1}, "'backoff_max'"),
        ("https://example.com/h", {"secret": 123}, "'secret'"),
        ("https://example.com/h", {"secret": "whsec_!!not base64!!"}, "'secret'"),
        ("https://example.com/h", {"headers": ["X-A"]}, "'headers'"),
        ("https://example.com/h", {"headers": {"webhook-id": "x"}}, "webhook-id"),
        ("https://example.com/h", {"headers": {"X-A": "a\r\nB: c"}}, "X-A"),
    ],
)
def test_factory_rejects_bad_config(target: str | None, options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_webhook_sink(target, options)


def test_bad_secret_error_does_not_show_it() -> None:
    bad = "whsec_s3cr3t-but-not-base64!"
    with pytest.raises(ConfigError) as info:
        make_webhook_sink("https://example.com/h", {"secret": bad})
    assert bad not in str(info.value) and "s3cr3t" not in str(info.value)


def test_signing_key_is_a_core_secret() -> None:
    key = SigningKey.parse(SECRET)
    assert key.key == KEY
    assert isinstance(key.secret, Secret)
    assert KEY.hex() not in repr(key) and SECRET not in repr(key) and "**" in repr(key) and str(key) == repr(key)
    assert key == SigningKey.parse(KEY.decode())  # one key, two spellings
    assert key == SigningKey.parse(SECRET) and hash(key) == hash(SigningKey.parse(SECRET))
    assert key != SigningKey.parse("another secret")
