"""Bad input, generated: the job parser, the error-body reader, the config loader, and ids at every door.

Properties (hypothesis, modest example counts, no deadline) and targeted adversarial cases:

* ``parse_job``: any bytes give a ``Job`` (that survives our own serialization) or a ``MalformedResponseError``
  with a one-line message — deep nesting beyond orjson's limit and ours, huge numbers, NaN-like tokens,
  duplicate keys, BOM, UTF-16, invalid UTF-8, very long strings.
* ``parse_error_body`` / ``api_error``: any status 100-599 and any bytes: never raise, one line, bounded, fast.
* ``parse_config``: YAML features — aliases (billion laughs), recursive anchors, ``!!python/*`` tags, deep
  nesting, huge documents, non-string and duplicate keys — give a ``Config`` or one ``ConfigError`` line, quickly.
* Ids everywhere: path traversal, ``?``, ``#``, ``%2F``, confusables, RTL overrides, NUL and other control
  characters are refused with one line by ``validate_id``, ``CCEClient.fetch``, ``Scheduler.add``, the API's
  routes and bodies and the CLI, before anything is sent (requests are counted on local servers).

Defects this review found are fixed; their tests stay as regression tests.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.cli import cli
from monitor.config import Config, parse_config
from monitor.core.errors import (
    APIError,
    AuthError,
    ConfigError,
    InvalidIdError,
    MalformedResponseError,
    NotFoundError,
    RequestError,
    ServerError,
    ThrottledError,
    api_error,
    parse_error_body,
)
from monitor.core.events import Event
from monitor.core.model import Job, job_from_json, job_to_json, parse_job, validate_id
from monitor.core.secret import Secret
from monitor.daemon.api import AddResult, make_app, serve
from monitor.daemon.store import StoredJob
from monitor.engine.scheduler import Scheduler, SchedulerSettings
from monitor.sim import Simulator, SimulatorConfig

PROJECT = SimulatorConfig().project_id
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line(text: str, limit: int = 400) -> None:
    assert text, "an empty message"
    assert len(text.splitlines()) == 1, repr(text[:200])
    assert len(text) <= limit, len(text)


# ============================================================================================ parse_job


def job_outcome(body: bytes | str) -> Job | MalformedResponseError:
    """What ``parse_job`` makes of ``body``; anything but a Job or MalformedResponseError fails the test."""
    try:
        job = parse_job(body)
    except MalformedResponseError as exc:
        one_line(exc.message, 600)
        return exc
    assert isinstance(job, Job)
    assert job_from_json(job_to_json(job)) == job  # what the daemon stores it can read back
    return job


def doc(uid: object = "job-1", phase: object = "Running", extend: object = None, subs: object = None) -> dict:
    spec: dict[str, Any] = {"type": "CreateNode", "clusterUID": "c-1"}
    if extend is not None:
        spec["extendParam"] = extend
    if subs is not None:
        spec["subJobs"] = subs
    return {"kind": "Job", "metadata": {"uid": uid}, "spec": spec, "status": {"phase": phase, "reason": ""}}


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # orjson's range; beyond it: _NUMBER_TOKENS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
_NUMBER_TOKENS = [
    "NaN", "Infinity", "-Infinity", "nan", "inf", "1e999", "-1e999", "1e-999", "0x10", "+1", ".5", "1.", "01", "-",
    "1e", "1_000", "\u0661\u0662", str(10**400), "-" + str(10**400), "1" * 5000, "9" * 20,
]  # fmt: skip


def _mutate(body: bytes, how: str, where: int, junk: bytes) -> bytes:
    where %= max(1, len(body))
    if how == "truncate":
        return body[:where]
    if how == "insert":
        return body[:where] + junk + body[where:]
    if how == "bom":
        return b"\xef\xbb\xbf" + body
    if how == "utf16":
        return body.decode().encode("utf-16")
    if how == "utf32":
        return body.decode().encode("utf-32-le")
    if how == "trailing_commas":
        return body.replace(b"}", b",}").replace(b"]", b",]")
    if how == "duplicate_keys":
        return body.replace(b'"status":', b'"status":{"phase":"Failed"},"status":', 1)
    return body


_bodies = st.one_of(
    st.builds(doc, uid=_values, phase=_values, extend=_values, subs=st.lists(_values, max_size=3) | _values).map(
        orjson.dumps
    ),
    st.tuples(
        st.builds(doc, extend=st.dictionaries(st.text(max_size=5), _values, max_size=3)).map(orjson.dumps),
        st.sampled_from(["truncate", "insert", "bom", "utf16", "utf32", "trailing_commas", "duplicate_keys", "as is"]),
        st.integers(0, 10_000),
        st.binary(min_size=1, max_size=8) | st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\"]),
    ).map(lambda t: _mutate(*t)),
    st.sampled_from(_NUMBER_TOKENS).map(
        lambda n: b'{"metadata": {"uid": "a"}, "spec": {"extendParam": {"n": ' + n.encode() + b"}}}"
    ),
    st.binary(max_size=300),
    st.text(max_size=300),
)


@FUZZ
@given(body=_bodies)
def test_parse_job_gives_a_job_or_one_clear_error(body: bytes | str) -> None:
    job_outcome(body)


def _nested(open_: bytes, close: bytes, depth: int, inner: bytes = b"1") -> bytes:
    return open_ * depth + inner + close * depth


def _subjobs(depth: int) -> bytes:
    """A job whose sub-jobs nest ``depth`` levels (built as text: orjson cannot dump that deep)."""
    head = b'{"metadata": {"uid": "j"}, "status": {"phase": "Running"}, "spec": {"subJobs": ['
    return head * depth + b'{"metadata": {"uid": "leaf"}}' + b"]}}" * depth


DEEP = {
    "lists 1025": _nested(b"[", b"]", 1025),
    "lists 100k": _nested(b"[", b"]", 100_000),
    "objects 1025": _nested(b'{"a":', b"}", 1025),
    "objects 100k": _nested(b'{"a":', b"}", 100_000),
    "unclosed 1M": b"[" * 1_000_000,
    "sub-jobs 17": _subjobs(17),
    "sub-jobs 200": _subjobs(200),
    "deep in status": b'{"metadata":{"uid":"a"},"status":' + _nested(b'{"a":', b"}", 2000) + b"}",
    "deep with a trailing comma": _nested(b"[", b",]", 2000),
}


@pytest.mark.parametrize("body", list(DEEP.values()), ids=list(DEEP))
def test_deep_nesting_is_a_clear_error(body: bytes) -> None:
    started = time.perf_counter()
    outcome = job_outcome(body)
    assert isinstance(outcome, MalformedResponseError), outcome
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("depth", [9, 254, 300, 1000])
def test_deep_extend_param_is_refused_or_storable(depth: int) -> None:
    # orjson reads 1024 levels but writes 255: a snapshot the daemon cannot store would lose its events.
    body = b'{"metadata": {"uid": "a"}, "spec": {"extendParam": {"deep": ' + _nested(b"[", b"]", depth) + b"}}}"
    job_outcome(body)


def test_invalid_utf8_is_malformed() -> None:
    outcome = job_outcome(b'{"metadata": {"uid": "job-1"}, "status": {"phase": "Run\xffning"}}')
    assert isinstance(outcome, MalformedResponseError)


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata": {"uid": "' + b"u" * 4_000_000 + b'"}, "status": {"phase": "Running"}}',
        b'{"metadata": {"uid": "a"}, "status": {"phase": "Failed", "reason": "' + "é".encode() * 2_000_000 + b'"}}',
        b'{"metadata": {"uid": "a"}, "spec": {"extendParam": {' + b",".join(b'"k%d": 1' % i for i in range(200_000))
        + b"}}}",
        b'{"metadata": {"uid": "a"}, "spec": {"subJobs": [' + b",".join([b'{"metadata": {"uid": "s"}}'] * 30_000)
        + b"]}}",
    ],
    ids=["4 MB id", "4 MB reason", "200k extend keys", "30k sub-jobs"],
)  # fmt: skip
def test_huge_bodies_parse_quickly(body: bytes) -> None:
    started = time.perf_counter()
    assert isinstance(job_outcome(body), Job)
    assert time.perf_counter() - started < 5


# ========================================================================================= error bodies

_CONTENT_TYPES = st.sampled_from(["", "text/html", "application/json", "text/plain; charset=utf-8", "TEXT/HTML"])
_error_bodies = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(str.encode),
    st.dictionaries(
        st.sampled_from(["errorCode", "errorMessage", "error_code", "error_msg", "code", "message", "msg", "title",
                         "error", "status", "reason"]),
        _values, max_size=6,
    ).map(orjson.dumps),
    st.builds(lambda t, j: f"<html><head><title>{t}</title></head>{j}</html>".encode(), st.text(max_size=80),
              st.text(max_size=80)),
)  # fmt: skip


@FUZZ
@given(status=st.integers(100, 599), body=_error_bodies, content_type=_CONTENT_TYPES)
@example(status=503, body=b"<html><title>\n\n</title>" + b"\xff" * 10, content_type="text/html")
@example(status=500, body=b'{"error": {"code": "X", "message": null}}', content_type="")
def test_error_bodies_give_one_clear_line(status: int, body: bytes, content_type: str) -> None:
    code, message = parse_error_body(body, content_type)
    one_line(message, 300)
    if code is not None:
        one_line(code, 300)
    assert not [ch for ch in message + (code or "") if unicodedata.category(ch) == "Cc"], repr(message)
    error = api_error(status, body, content_type=content_type, request_id="req-1", retry_after="1e999")
    expected: type[APIError] = {401: AuthError, 403: AuthError, 404: NotFoundError, 429: ThrottledError}.get(
        status, ServerError if status >= 500 else RequestError
    )
    if code in ("APIGW.0308", "CCE.02429001") and expected in (RequestError, ServerError):
        expected = ThrottledError
    assert type(error) is expected
    assert error.status == status and error.retry_after == 3600.0
    one_line(str(error), 700)
    assert "req-1" in repr(error)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>" + b"<title>" * 5000, id="unclosed titles"),
        pytest.param(b"<html><title>x</title>" + b"a" * 8_000_000, id="8 MB page"),
        pytest.param(
            b"<html>" + b"<" * 50_000,
            id="unclosed tags",
        ),
    ],
)
def test_error_body_reading_is_linear(body: bytes) -> None:
    started = time.perf_counter()
    api_error(502, body, content_type="text/html")
    assert time.perf_counter() - started < 0.2  # linear work on these ~50 KB takes a few milliseconds


def test_error_messages_carry_no_control_characters() -> None:
    _, message = parse_error_body(b'{"error_msg": "denied\\u001b]0;owned\\u0007\\u001b[2J\\u202e"}')
    assert not [ch for ch in message if unicodedata.category(ch) in ("Cc", "Cf")], repr(message)


def test_error_messages_carry_no_format_characters() -> None:
    _, message = parse_error_body('{"error_msg": "denied\u061c \U000e0049\U000e0047\U000e004e"}'.encode())
    assert not [ch for ch in message if unicodedata.category(ch) in ("Cc", "Cf")], repr(message)


# =============================================================================================== config

BASE = f"endpoint: http://127.0.0.1:1\nproject_id: {PROJECT}\n"


def config_outcome(text: str) -> Config | ConfigError:
    """``parse_config``'s answer: a Config or one ConfigError line; anything else fails the test."""
    try:
        return parse_config(text, env={"TOK": "tok-value", "EMPTY": ""})
    except ConfigError as exc:
        assert type(exc) is ConfigError
        one_line(exc.message, 500)
        return exc


_KEYS = st.sampled_from(
    ["endpoint", "project_id", "auth", "token", "http", "polling", "rate", "sinks", "type", "labels", "api",
     "listen", "state", "path", "logging", "level", "ca_bundle", "secret", "filter", "types"]
) | st.text(max_size=10)  # fmt: skip
_yaml_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.just("${TOK}")
_yaml_values = st.recursive(
    _yaml_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=25,
)  # fmt: skip


@FUZZ
@given(extra=st.dictionaries(_KEYS, _yaml_values, max_size=5))
def test_random_config_documents(extra: dict[str, Any]) -> None:
    config_outcome(BASE + yaml.safe_dump(extra, allow_unicode=True))


_yaml_text = st.text(
    st.characters(exclude_categories=["Cs"]) | st.sampled_from("\n:-#'\"[]{},!&*\\0123456789"), max_size=400
)


@FUZZ
@given(text=_yaml_text)
def test_random_config_text(text: str) -> None:
    config_outcome(BASE + text)


CONFIG_CASES = {
    "python object": "x: !!python/object:os.system {}",
    "python apply": "x: !!python/object/apply:os.system ['true']",
    "python name": "x: !!python/name:os.system",
    "python module": "x: !!python/module:os",
    "custom tag": "x: !secret value",
    "binary": "labels: {a: !!binary aGVsbG8=}",
    "set": "labels: !!set {a, b}",
    "timestamp": "labels: {a: 2001-12-14t21:59:43.10-05:00}",
    "omap": "labels: !!omap [{a: b}]",
    "nan": "polling: {rate: .nan}",
    "inf": "polling: {job_timeout: .inf}",
    "int key": "labels: {1: a}",
    "null key": "~: a",
    "bool key": "labels: {true: a}",
    "float key": "1.5: a",
    "list key": "? [a, b]\n: c",
    "map key": "? {a: b}\n: c",
    "merge": "defaults: &d {rate: 5}\npolling: {<<: *d, interval: 1}",
    "alias to scalar": "labels: {a: &x b, c: *x}",
    "undefined alias": "labels: *nowhere",
    "tab indent": "labels:\n\ta: b",
    "document stream": "labels: {}\n---\nlabels: {}",
    "nul": 'labels: {a: "\\0"}',
    "bom": "\ufefflabels: {}",
    "ref in key": "labels: {'${TOK}': a}",
    "empty ref": "auth: {token: '${EMPTY}'}",
}


@pytest.mark.parametrize("text", list(CONFIG_CASES.values()), ids=list(CONFIG_CASES))
def test_yaml_features_give_a_config_or_one_line(text: str) -> None:
    started = time.perf_counter()
    outcome = config_outcome(BASE + text + "\n")
    assert time.perf_counter() - started < 2
    if text.startswith("x: !!python"):
        assert isinstance(outcome, ConfigError) and "not valid YAML" in outcome.message


def test_a_large_config_is_read_quickly() -> None:
    labels = "".join(f"  k{i}: {'v' * 40}\n" for i in range(5000))  # ~250 KB
    started = time.perf_counter()
    outcome = config_outcome(BASE + "labels:\n" + labels)
    assert isinstance(outcome, Config) and len(outcome.labels) == 5000
    assert time.perf_counter() - started < 5


_LAUGHS = (
    BASE
    + 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
)


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    assert len(_LAUGHS) < 1024
    path = tmp_path / "laughs.yaml"
    path.write_text(_LAUGHS)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from monitor.config import load_config\nfrom monitor.core.errors import ConfigError\n"
        "try:\n    load_config(sys.argv[1], env={})\nexcept ConfigError as exc:\n    print('refused:', exc)\n"
    )
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(path)], check=False, capture_output=True, text=True, timeout=3, cwd=root
        )
    except subprocess.TimeoutExpired:
        pytest.fail("parse_config did not finish within 3 s")
    assert done.stdout.startswith("refused:"), (done.stdout, done.stderr[-500:])


RECURSIVE = {"recursive list": "labels: &a [*a]", "recursive map": "x: &a {y: *a}"}


@pytest.mark.parametrize("text", list(RECURSIVE.values()), ids=list(RECURSIVE))
def test_recursive_anchors_are_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(BASE + text + "\n", env={})


PYYAML_ESCAPES = {
    "impossible date": "labels: {release: 2024-02-30}",
    "month 13": "labels: {release: 2024-13-01}",
    "int tag": "labels: {a: !!int abc}",
    "float tag": "labels: {a: !!float abc}",
    "bool tag": "labels: {a: !!bool maybe}",
    "5000 digits": "polling: {max_in_flight: " + "9" * 5000 + "}",
    "deep flow lists": "labels: " + "[" * 3000 + "]" * 3000,
    "deep block maps": "labels:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 1200)),
}


@pytest.mark.parametrize("text", list(PYYAML_ESCAPES.values()), ids=list(PYYAML_ESCAPES))
def test_every_yaml_failure_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(BASE + text + "\n", env={})


@pytest.mark.parametrize("key", ['"a\\nb"', '"\\e[2J"', '"a\\u2028b"'])
def test_config_errors_show_keys_escaped(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + f"{key}: 1\n", env={})
    one_line(info.value.message)
    assert info.value.message.isprintable(), repr(info.value.message)


@pytest.mark.parametrize(
    "text", [BASE + "endpoint: http://127.0.0.1:2\n", BASE + "api: {listen: '127.0.0.1:9000'}\napi: {}\n"]
)
def test_duplicate_keys_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"endpoint|api"):
        parse_config(text, env={})


# ================================================================================================ ids

ADVERSARIAL_IDS = [
    "", ".", "..", "../x", "..%2Fx", "a/b", "/a", "a/", "a\\b", "a?b", "a?b=1", "a#b", "a%2Fb", "a%2fb", "%2e%2e",
    "%00", "a%", "a b", " a", "a ", "a\tb", "a\nb", "a\rb", "a\x00b", "\x00", "a\x1bb", "a\x7fb", "a\x85b",
    "a\u2028b", "a\u202eb", "\u202ecod.exe", "a\u200bb", "\ufeffa", "a\u2215b", "a\uff0fb", "\u0430bc",
    "\uff41bc", "\uff41\uff42\uff43", "job-\u0661", "jöb", "İ", "ß", "-a", "_a", "a" * 129, "a" * 10_000, "a;b", "a&b",
    "a=b", "a+b", "a@b", "a:b", "a*b", "$(id)", "`id`", "a'b", 'a"b', "a<b>", "{a}", "a|b", "~a", "a.b",
]  # fmt: skip
_bad_piece = st.sampled_from(
    ["..", "/", "\\", "?", "#", "%2F", "%", "\x00", "\n", "\r", "\t", " ", "\u202e", "\u200b", "\ufeff", "\u2215",
     "\uff0f", "\u0430", "\x7f", "\x85", "\u2028", ";", "&", "=", "+", "@", ":", ".", "é"]
)  # fmt: skip
_safe = st.from_regex(r"[A-Za-z0-9_-]{0,8}", fullmatch=True)
bad_ids = st.one_of(
    st.builds(lambda a, bad, b: a + bad + b, _safe, _bad_piece, _safe),
    st.text(max_size=40).filter(lambda s: not ID_RE.fullmatch(s)),
    st.from_regex(r"[_-][A-Za-z0-9_-]{0,10}", fullmatch=True),
    st.integers(129, 400).map(lambda n: "a" * n),
)


@FUZZ
@given(value=bad_ids)
def test_validate_id_refuses_with_one_line(value: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        validate_id(value, "job id")
    one_line(info.value.message, 200)
    assert info.value.message.isprintable(), repr(info.value.message)


@pytest.mark.parametrize("value", [None, 5, 1.5, b"abc", ["a"], {"a": 1}, object()])
def test_validate_id_refuses_other_types(value: object) -> None:
    with pytest.raises(InvalidIdError):
        validate_id(value)


class LoopThread:
    """An event loop in a thread, so that sync hypothesis tests can drive servers and clients on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def counting_sim(loop_thread: LoopThread) -> Iterator[Simulator]:
    sim = Simulator(SimulatorConfig())
    loop_thread.run(sim.start())
    yield sim
    loop_thread.run(sim.close())


async def _client_refuses(endpoint: str, value: str) -> None:
    settings = ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=2)
    auth = TokenAuth(Secret(SimulatorConfig().token))
    async with CCEClient(settings, auth) as client:
        with pytest.raises(InvalidIdError) as info:
            await client.fetch(value)
        one_line(info.value.message, 200)
        scheduler = Scheduler(client, _ignore, SchedulerSettings())
        with pytest.raises(InvalidIdError):
            scheduler.add(value)
        with pytest.raises(InvalidIdError):
            scheduler.add_many(["fine-id", value])
        with pytest.raises(InvalidIdError):
            ClientSettings(endpoint=endpoint, project_id=value)


async def _ignore(event: Event) -> None:
    return None


def test_catalogue_of_bad_ids_never_reaches_cce(loop_thread: LoopThread, counting_sim: Simulator) -> None:
    assert counting_sim.endpoint is not None
    before = counting_sim.stats.requests
    for value in ADVERSARIAL_IDS:
        loop_thread.run(_client_refuses(counting_sim.endpoint, value))
    assert counting_sim.stats.requests == before


@FUZZ
@given(value=bad_ids)
def test_generated_bad_ids_never_reach_cce(loop_thread: LoopThread, counting_sim: Simulator, value: str) -> None:
    assert counting_sim.endpoint is not None
    before = counting_sim.stats.requests
    loop_thread.run(_client_refuses(counting_sim.endpoint, value))
    assert counting_sim.stats.requests == before


# ---------------------------------------------------------------------------------------------- the API

_LABEL_KEY = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_BAD_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


class RecordingControl:
    """The daemon side of the API: asserts that everything it receives is already valid."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _ids(self, *ids: str | None) -> None:
        for value in ids:
            if value is not None:
                assert ID_RE.fullmatch(value), repr(value)

    def _labels(self, labels: Mapping[str, str]) -> None:
        assert len(labels) <= 64
        for key, value in labels.items():
            assert _LABEL_KEY.fullmatch(key), repr(key)
            assert len(value) <= 256 and not any(unicodedata.category(c) in _BAD_CATEGORIES for c in value)

    async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str], rollout: str | None) -> AddResult:
        self.calls.append("add_jobs")
        self._ids(*job_ids, rollout)
        self._labels(labels)
        return AddResult(accepted=list(job_ids), known=[])

    async def list_jobs(self, *, phase: str | None, rollout: str | None, labels: Mapping[str, str]) -> list[StoredJob]:
        self.calls.append("list_jobs")
        self._ids(rollout)
        self._labels(labels)
        assert phase is None or re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", phase)
        return []

    async def get_job(self, job_id: str) -> tuple[StoredJob, list[Event]] | None:
        self.calls.append("get_job")
        self._ids(job_id)
        return None

    async def remove_job(self, job_id: str) -> bool:
        self.calls.append("remove_job")
        self._ids(job_id)
        return False

    def cluster(self) -> dict[str, Any] | None:
        return None

    def readiness(self) -> dict[str, bool]:
        return {"state": True}

    def rollouts(self) -> list[dict[str, Any]]:
        return []

    def rollout(self, name: str) -> dict[str, Any] | None:
        self.calls.append("rollout")
        self._ids(name)
        return None

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ApiServer:
    def __init__(self, loop_thread: LoopThread) -> None:
        self.lt = loop_thread
        self.control = RecordingControl()
        self.errors = _Errors()
        runner, base = loop_thread.run(serve(make_app(self.control, token=None, max_body=64 * 1024), "127.0.0.1", 0))
        self.runner = runner
        self.port = int(base.rsplit(":", 1)[1])
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, target, body=body, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):  # the server closed a kept-alive connection: reconnect
            self.conn.close()
            self.conn.request(method, target, body=body, headers=headers)
            resp = self.conn.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), (resp.status, raw[:200])
        return resp.status, orjson.loads(raw)

    def close(self) -> None:
        self.conn.close()
        self.lt.run(self.runner.cleanup())


@pytest.fixture(scope="module")
def api_server(loop_thread: LoopThread) -> Iterator[ApiServer]:
    server = ApiServer(loop_thread)
    logging.getLogger("monitor.daemon.api").addHandler(server.errors)
    yield server
    logging.getLogger("monitor.daemon.api").removeHandler(server.errors)
    server.close()


def assert_refused(status: int, body: Any, allowed: tuple[int, ...] = (400, 404)) -> None:
    assert status in allowed, (status, body)
    assert set(body) == {"error"}
    one_line(body["error"], 300)
    assert body["error"].isprintable(), repr(body["error"])


@FUZZ
@given(value=bad_ids, method=st.sampled_from(["GET", "DELETE"]), route=st.sampled_from(["jobs", "rollouts"]))
@example(value="..", method="GET", route="jobs")
@example(value="a%2Fb", method="DELETE", route="jobs")
@example(value="a\x00b", method="GET", route="rollouts")
def test_api_routes_refuse_bad_ids(api_server: ApiServer, value: str, method: str, route: str) -> None:
    if route == "rollouts" and method == "DELETE":
        method = "GET"
    calls = len(api_server.control.calls)
    status, body = api_server.request(method, f"/v1/{route}/{quote(value, safe='')}")
    assert_refused(status, body, (400, 404, 405))
    if status == 400:
        assert "invalid" in body["error"]
    assert len(api_server.control.calls) == calls
    assert api_server.errors.records == []


_label_keys = st.from_regex(r"[A-Za-z0-9_.-]{1,63}", fullmatch=True) | bad_ids
_label_values = (
    st.text(max_size=20) | st.builds(lambda a, b: a + b, st.text(max_size=5), _bad_piece) | st.just("x" * 257)
)


@FUZZ
@given(
    job_ids=st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True) | bad_ids, min_size=1,
                     max_size=4),
    labels=st.dictionaries(_label_keys, _label_values, max_size=3),
    rollout=st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True) | bad_ids,
)  # fmt: skip
def test_api_bodies_pass_only_valid_input_on(
    api_server: ApiServer, job_ids: list[str], labels: dict[str, str], rollout: str | None
) -> None:
    status, body = api_server.request(
        "POST", "/v1/jobs", orjson.dumps({"job_ids": job_ids, "labels": labels, "rollout": rollout})
    )
    if status == 202:
        assert set(body["accepted"]) == set(job_ids)
    else:
        assert_refused(status, body, (400,))
    assert api_server.errors.records == []


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(["phase", "rollout", "label", "x"]) | st.text(max_size=5),
                                st.text(max_size=30) | bad_ids), max_size=4))  # fmt: skip
def test_api_queries_pass_only_valid_filters_on(api_server: ApiServer, pairs: list[tuple[str, str]]) -> None:
    status, body = api_server.request("GET", "/v1/jobs?" + urlencode(pairs))
    if status == 200:
        assert body == {"jobs": []}
    else:
        assert_refused(status, body, (400,))
    assert api_server.errors.records == []


def test_api_refuses_many_bad_ids_in_one_line(api_server: ApiServer) -> None:
    body = orjson.dumps({"job_ids": ["ok", *(i for i in ADVERSARIAL_IDS if len(i) < 200)] * 20})
    status, answer = api_server.request("POST", "/v1/jobs", body)
    assert_refused(status, answer, (400,))
    assert answer["error"].startswith("job_ids[1]: invalid job id")


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    """A socket that listens and never accepts: any connection attempt shows up as a pending accept."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    yield sock
    sock.close()


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture(scope="module")
def cli_runner() -> Iterator[CliRunner]:
    """A click runner; the CLI replaces the root logger's handlers and level, which are restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


def cli_env(sock: socket.socket) -> dict[str, str]:
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    return {"CCE_ENDPOINT": url, "CCE_PROJECT_ID": PROJECT, "CCE_AUTH_TOKEN": "tok", "CCE_MONITOR_API": url}


def cli_refuses(
    runner: CliRunner, sock: socket.socket, args: list[str], stdin: str | None = None, env: dict[str, str] | None = None
) -> str:
    result = runner.invoke(cli, args, env={**cli_env(sock), **(env or {})}, input=stdin)
    assert result.exit_code == 2, (args, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cce-monitor: error: "), result.output
    assert connections(sock) == 0, f"{args} made a connection"
    return lines[0]


def _commands(value: str) -> list[list[str]]:
    return [
        ["watch", "--no-live", "--", value],
        ["watch", "--no-live", f"--rollout={value}", "--", "fine-id"],
        ["watch", "--no-live", f"--project-id={value}", "--", "fine-id"],
        ["get", "--", value],
        ["get", f"--project-id={value}", "--", "fine-id"],
        ["add", "--", value],
        ["status", "--", value],
    ]


def test_cli_refuses_the_catalogue_before_connecting(cli_runner: CliRunner, listener: socket.socket) -> None:
    for value in ADVERSARIAL_IDS:
        if value in ("", "-"):
            continue
        for args in _commands(value):
            assert "invalid" in cli_refuses(cli_runner, listener, args)
    assert "invalid job id" in cli_refuses(cli_runner, listener, ["watch", "--no-live", "-"], "ok ../etc/passwd\n")


@FUZZ
@given(value=bad_ids.filter(lambda s: s not in ("", "-")), which=st.integers(0, 6))
def test_cli_refuses_generated_ids_before_connecting(
    cli_runner: CliRunner, listener: socket.socket, value: str, which: int
) -> None:
    cli_refuses(cli_runner, listener, _commands(value)[which])


BAD_LABELS = {"escape": "team=\x1b[2Jred", "bidi": "team=\u202eevil", "newline": "team=a\nb", "bad key": "a b=c"}


@pytest.mark.parametrize("label", list(BAD_LABELS.values()), ids=list(BAD_LABELS))
def test_watch_refuses_bad_labels(cli_runner: CliRunner, listener: socket.socket, label: str) -> None:
    # Should the label pass (the defect), the run must end soon: nothing listens there, and jobs time out fast.
    closed = {"CCE_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    args = ["watch", "--no-live", "--timeout", "0.2", "--interval", "0.1", "--label", label, "--", "fine-id"]
    cli_refuses(cli_runner, listener, args, env=closed)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("labels", ['{team: "\\e[2Jred"}', '{team: "\\u202eevil"}', '{"a b": c}', '{"": c}'])
def test_config_refuses_bad_labels(labels: str) -> None:
    with pytest.raises(ConfigError, match="labels"):
        parse_config(BASE + f"labels: {labels}\n", env={})


# --------------------------------------------------------------------------------------- server's text


EVIL = "disk\x1b]0;owned\x07\x1b[2J\u202efull"


@pytest.fixture(scope="module")
def evil_daemon(loop_thread: LoopThread) -> Iterator[str]:
    """A daemon API whose jobs and rollouts carry what CCE sent: escape sequences in phases and reasons."""
    from aiohttp import web  # noqa: PLC0415

    job = {"job_id": "job-1", "labels": {}, "rollout": "r1", "added_at": None, "phase": "Run" + EVIL,
           "outcome": None, "finished_at": None}  # fmt: skip
    rollout = {"rollout": "r1", "total": 1, "finished": 1, "counts": {"Abnormal" + EVIL: 1}, "ended": True,
               "duration_s": 5, "failed": [{"job_id": "job-1", "outcome": "Failed", "resource_name": "node" + EVIL,
                                            "reason": EVIL}], "failed_count": 1}  # fmt: skip

    async def jobs(request: web.Request) -> web.Response:
        return web.json_response({"jobs": [job]})

    async def rollouts(request: web.Request) -> web.Response:
        return web.json_response({"rollouts": [rollout]})

    app = web.Application()
    app.router.add_get("/v1/jobs", jobs)
    app.router.add_get("/v1/rollouts", rollouts)
    runner, base = loop_thread.run(serve(app, "127.0.0.1", 0))
    yield base
    loop_thread.run(runner.cleanup())


@pytest.mark.parametrize("command", ["status", "ls"])
def test_status_and_ls_escape_what_cce_sent(cli_runner: CliRunner, evil_daemon: str, command: str) -> None:
    result = cli_runner.invoke(cli, [command, "--api", evil_daemon])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "job-1" in result.output or "r1" in result.output
    assert not [ch for ch in result.output if unicodedata.category(ch) in ("Cc", "Cf") and ch != "\n"], result.output
