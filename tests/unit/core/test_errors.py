"""Reading CCE/IAM/gateway error bodies and mapping error responses to the exception tree (``monitor.core.errors``)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from monitor.core.errors import (
    APIError,
    AuthError,
    ConfigError,
    ConnectError,
    InvalidIdError,
    MalformedResponseError,
    MonitorError,
    NotFoundError,
    RequestError,
    RequestTimeoutError,
    ServerError,
    SinkError,
    ThrottledError,
    TransportError,
    api_error,
    parse_budget,
    parse_error_body,
    parse_retry_after,
    transport_detail,
)
from monitor.core.secret import Secret, redact

CCE_404 = orjson.dumps({"errorCode": "CCE.01404001", "errorMessage": "Resource not found", "error_code": "x"})
APIGW_429 = orjson.dumps({"error_code": "APIGW.0308", "error_msg": "The request is throttled.", "request_id": "r1"})
K8S_STATUS = orjson.dumps(
    {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "job not found",
        "reason": "NotFound",
        "code": 404,
        "errorCode": "CCE.01404001",
        "errorMessage": "Job 354331b2c not found",
    }
)
IAM_401 = orjson.dumps(
    {"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}
)
HTML_503 = b"""<!DOCTYPE html>
<html>
<head><title>503 Service
  Temporarily Unavailable</title></head>
<body><center><h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body>
</html>
"""
MAX_MESSAGE = 300


# --- parse_error_body --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (CCE_404, "application/json", ("CCE.01404001", "Resource not found")),
        (APIGW_429, "application/json", ("APIGW.0308", "The request is throttled.")),
        (b'{"code": "CCE.01400001", "message": "Invalid request."}', "", ("CCE.01400001", "Invalid request.")),
        (K8S_STATUS, "application/json", ("CCE.01404001", "Job 354331b2c not found: job not found")),  # both
        (b'{"kind": "Status", "code": 500, "message": "etcd timeout"}', "", (None, "etcd timeout")),
        (IAM_401, "application/json", (None, "The request you have made requires authentication.")),
        (b'{"error": {"code": 403, "title": "Forbidden"}}', "application/json", (None, "Forbidden")),
        (b'{"error": {"code": "IAM.0001", "message": "bad"}}', "application/json", ("IAM.0001", "bad")),
        (b'{"error_code": "APIGW.0101"}', "application/json", ("APIGW.0101", "APIGW.0101")),
        (b'{"errorCode": " ", "errorMessage": "only a message"}', "", (None, "only a message")),
        (
            b'{"error_code": "CCE.01400001", "error_msg": "Request body invalid",'
            b' "message": "invalid primary fixedIp"}',
            "",
            ("CCE.01400001", "Request body invalid: invalid primary fixedIp"),
        ),
        (b'{"msg": "short style"}', "", (None, "short style")),
        (HTML_503, "text/html", (None, "503 Service Temporarily Unavailable")),
        (HTML_503, "", (None, "503 Service Temporarily Unavailable")),
        (b"<html><body><h1>Bad   Gateway</h1></body></html>", "text/html; charset=utf-8", (None, "Bad Gateway")),
        (b"<html></html>", "text/html", (None, "HTML error page")),
        (b"upstream connect error or reset", "text/plain", (None, "upstream connect error or reset")),
        (b"line one\nline two\r\n\tline three", "text/plain", (None, "line one line two line three")),
        (b"", "", (None, "(empty body)")),
        (b"   \n", "text/plain", (None, "(empty body)")),
        (b'{"errorCode": "CCE.1", "errorMsg": ', "application/json", (None, '{"errorCode": "CCE.1", "errorMsg":')),
        (b"[1, 2]", "application/json", (None, "[1, 2]")),
        (b'{"unrelated": true}', "application/json", (None, '{"unrelated": true}')),
        (b"\xff\xfebad bytes", "", (None, "\ufffd\ufffdbad bytes")),
    ],
    ids=[
        "cce",
        "apigw",
        "code-message",
        "k8s-status-cce",
        "k8s-status-numeric-code",
        "iam",
        "iam-title",
        "iam-string-code",
        "code-only",
        "blank-code",
        "two-messages",
        "msg",
        "html-ct",
        "html-sniffed",
        "html-no-title",
        "html-empty",
        "plain",
        "multiline",
        "empty",
        "blank",
        "invalid-json",
        "json-array",
        "json-unknown",
        "invalid-utf8",
    ],
)
def test_parse_error_body(body: bytes, content_type: str, expected: tuple[str | None, str]) -> None:
    assert parse_error_body(body, content_type) == expected


def test_long_message_is_clipped_to_one_line() -> None:
    message = "first line\n" + "x" * 1000 + "\nlast line"
    code, text = parse_error_body(orjson.dumps({"errorCode": "CCE.01500001", "errorMessage": message}))
    assert code == "CCE.01500001"
    assert "\n" not in text
    assert len(text) == MAX_MESSAGE
    assert text.startswith("first line xxx")
    assert text.endswith("…")


def test_long_plain_text_and_code_are_clipped() -> None:
    code, text = parse_error_body(orjson.dumps({"code": "C" * 500, "message": "m"}))
    assert code is not None
    assert len(code) == MAX_MESSAGE
    assert text == "m"
    _, text = parse_error_body(b"y" * 5000, "text/plain")
    assert text == "y" * (MAX_MESSAGE - 1) + "…"


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=600)
    | st.text(max_size=600).map(str.encode)
    | st.dictionaries(
        st.sampled_from(["errorCode", "errorMessage", "error_code", "error_msg", "code", "message", "title", "error"]),
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=400)
        | st.dictionaries(st.text(max_size=8), st.text(), max_size=3),
        max_size=5,
    ).map(orjson.dumps),
    content_type=st.sampled_from(["", "application/json", "text/html", "text/plain", "TEXT/HTML; charset=x"])
    | st.text(max_size=30),
)
def test_parse_error_body_never_raises(body: bytes, content_type: str) -> None:
    code, message = parse_error_body(body, content_type)
    assert isinstance(message, str)
    assert message
    assert "\n" not in message and "\r" not in message
    assert len(message) <= MAX_MESSAGE
    if code is not None:
        assert code.strip()
        assert "\n" not in code
        assert len(code) <= MAX_MESSAGE


# --- parse_retry_after -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("3", 3.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("-1", None),
        ("nan", None),
        ("NaN", None),
        ("abc", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("3600", 3600.0),
        ("86400", 3600.0),
        ("1e30", 3600.0),
        ("inf", 3600.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


# --- api_error ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, RequestError, False),
        (401, AuthError, False),
        (403, AuthError, False),
        (404, NotFoundError, False),
        (409, RequestError, False),
        (429, ThrottledError, True),
        (500, ServerError, True),
        (502, ServerError, True),
        (503, ServerError, True),
        (504, ServerError, True),
    ],
)
def test_api_error_maps_status(status: int, cls: type[APIError], retryable: bool) -> None:
    error = api_error(status, CCE_404, content_type="application/json", request_id="req-1")
    assert type(error) is cls
    assert isinstance(error, APIError)
    assert isinstance(error, MonitorError)
    assert error.retryable is retryable
    assert error.status == status
    assert error.code == "CCE.01404001"
    assert error.message == "Resource not found"
    assert error.request_id == "req-1"
    assert str(error) == f"HTTP {status} CCE.01404001: Resource not found (request id req-1)"


def test_throttled_error_from_gateway_body() -> None:
    error = api_error(429, APIGW_429, content_type="application/json", request_id="abc123", retry_after="3")
    assert isinstance(error, ThrottledError)
    assert error.retryable is True
    assert error.retry_after == 3.0
    assert error.code == "APIGW.0308"
    assert str(error) == "HTTP 429 APIGW.0308: The request is throttled. (request id abc123)"


@pytest.mark.parametrize("retry_after", [None, "", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_throttled_error_without_usable_retry_after(retry_after: str | None) -> None:
    error = api_error(429, APIGW_429, retry_after=retry_after)
    assert isinstance(error, ThrottledError)
    assert error.retry_after is None


_THRESHOLD = "The throttling threshold has been reached: policy user over ratelimit,"


@pytest.mark.parametrize(
    ("code", "message", "budget"),
    [
        ("APIGW.0308", _THRESHOLD + "limit:10,time:1 second", (10, 1.0)),
        ("APIG.0308", _THRESHOLD + "limit:120,time:1 minute", (120, 60.0)),
        ("APIGW.0308", _THRESHOLD + "limit: 5 , time: 2 seconds", (5, 2.0)),
        ("APIGW.0308", "The request is throttled.", None),
        ("APIGW.0308", _THRESHOLD + "limit:0,time:1 second", None),
    ],
)
def test_the_gateway_budget_is_read_from_the_throttle_message(
    code: str, message: str, budget: tuple[int, float] | None
) -> None:
    assert parse_budget(message) == budget
    error = api_error(429, orjson.dumps({"error_code": code, "error_msg": message}), content_type="application/json")
    assert isinstance(error, ThrottledError) and error.budget == budget


def test_throttle_code_on_other_status_is_throttled() -> None:
    body = orjson.dumps({"errorCode": "CCE.02429001", "errorMessage": "Too many requests"})
    error = api_error(400, body)
    assert isinstance(error, ThrottledError)
    assert error.retryable is True


def test_server_error_from_html_page() -> None:
    error = api_error(503, HTML_503, content_type="text/html", retry_after="10")
    assert isinstance(error, ServerError)
    assert error.retryable is True
    assert error.retry_after == 10.0
    assert error.code is None
    assert error.request_id is None
    assert str(error) == "HTTP 503: 503 Service Temporarily Unavailable"


def test_auth_error_from_iam_body() -> None:
    error = api_error(401, IAM_401, content_type="application/json", request_id="r-9")
    assert isinstance(error, AuthError)
    assert error.retryable is False
    assert str(error) == "HTTP 401: The request you have made requires authentication. (request id r-9)"
    assert repr(error) == (
        "AuthError(status=401, code=None, message='The request you have made requires authentication.', "
        "request_id='r-9')"
    )


def test_empty_body_error() -> None:
    error = api_error(500, b"")
    assert str(error) == "HTTP 500: (empty body)"


# --- the tree ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "parent", "retryable"),
    [
        (ConfigError, MonitorError, False),
        (InvalidIdError, ValueError, False),
        (TransportError, MonitorError, True),
        (ConnectError, TransportError, True),
        (RequestTimeoutError, TransportError, True),
        (MalformedResponseError, MonitorError, True),
    ],
)
def test_error_tree(cls: type[MonitorError], parent: type[Exception], retryable: bool) -> None:
    error = cls("went wrong")
    assert isinstance(error, parent)
    assert isinstance(error, MonitorError)
    assert error.retryable is retryable
    assert error.message == "went wrong"
    assert error.retry_after is None


def test_malformed_response_error_request_id() -> None:
    assert str(MalformedResponseError("bad body", request_id="r-1")) == "bad body (request id r-1)"
    assert str(MalformedResponseError("bad body")) == "bad body"


def test_sink_error_retryable_per_instance() -> None:
    assert SinkError("webhook 500").retryable is True
    permanent = SinkError("webhook 400", retryable=False, retry_after=None)
    assert permanent.retryable is False
    assert SinkError("webhook 429", retry_after=2.0).retry_after == 2.0
    assert SinkError.retryable is False  # the class default is untouched


# --- redact and transport_detail --------------------------------------------------------------------------

SECRET = "tok-" + "".join(f"{i:03x}" for i in range(200))


def test_redact_masks_whole_secrets_and_pieces() -> None:
    assert redact(f"a {SECRET} b", [SECRET]) == "a *** b"
    assert redact(f"quoted: {SECRET[:40]}...", [Secret(SECRET)]) == "quoted: ***..."
    assert redact(f"middle {SECRET[100:113]} end", [SECRET]) == "middle *** end"
    assert redact(f"eleven {SECRET[100:111]} ok", [SECRET]) == f"eleven {SECRET[100:111]} ok"  # too short to tell
    assert redact("pw=short1 and short1", ["short1"]) == "pw=*** and ***"
    assert redact("nothing here", [SECRET, "", Secret("")]) == "nothing here"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(0, len(SECRET) - 12), st.integers(12, 60))
def test_redact_leaves_no_piece(prefix: str, start: int, size: int) -> None:
    out = redact(prefix + SECRET[start : start + size] + prefix, [SECRET])
    assert not any(out[i : i + 12] in SECRET for i in range(len(out) - 11))


def test_transport_detail_drops_what_a_parser_quoted() -> None:
    info = aiohttp.RequestInfo(URL("http://127.0.0.1:1/x"), "GET", CIMultiDictProxy(CIMultiDict()))
    quoted = f"Got more than 8190 bytes when reading: b'X-Subject-Token: {SECRET[:100]}...'."
    exc = aiohttp.ClientResponseError(info, (), status=400, message=quoted)
    assert transport_detail(exc) == "ClientResponseError: 400, Got more than 8190 bytes when reading: …."
    pointer = f"Invalid header token:\n\n  b'{SECRET[:30]}\n    ^"  # cut off: no closing quote
    exc = aiohttp.ClientResponseError(info, (), status=400, message=pointer)
    assert transport_detail(exc) == "ClientResponseError: 400, Invalid header token: …"


def test_transport_detail_keeps_other_errors_but_masks_secrets() -> None:
    exc = aiohttp.ClientConnectionError(f"Cannot connect to host 'cce.example' with {SECRET}")
    assert transport_detail(exc, [SECRET]) == "ClientConnectionError: Cannot connect to host 'cce.example' with ***"
    assert transport_detail(aiohttp.ServerDisconnectedError()) == "ServerDisconnectedError: Server disconnected"
    assert len(transport_detail(aiohttp.ClientConnectionError("x" * 5000))) <= 300
