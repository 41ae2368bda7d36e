"""``SDK-HMAC-SHA256`` signing (``monitor.cce.signing``), checked byte for byte against the vendor signer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.cce.signing import ParsedAuthorization, authorization, format_sdk_date, parse_authorization

AK = "HPUAJ5XKQ1EXAMPLEAK0"
SK = "Xm2fbQmL7yT4b6Rz0kqyEXAMPLEsecretKEYvalue1"
PROJECT_ID = "0b0f5d1d9c8a4bfa9d0c6c1b0f3d2e1a"
HOST = "cce.eu-de.otc.t-systems.com"
SDK_DATE = "20200202T081240Z"
JOB_PATH = f"/api/v3/projects/{PROJECT_ID}/jobs/354331b2c-229a-11e8-9c75-0255ac100ceb"


def vendor_authorization(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    *,
    ak: str = AK,
    sk: str = SK,
    host: str = HOST,
) -> str:
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        uri=path,
        query_params=list(query),
        header_params=dict(headers),
        body=body,
    )
    Signer(BasicCredentials(ak, sk, PROJECT_ID)).sign(request)
    value: str = request.header_params["Authorization"]
    return value


def ours(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    *,
    ak: str = AK,
    sk: str = SK,
    host: str = HOST,
) -> str:
    return authorization(ak, sk, method=method, path=path, query=query, headers={**headers, "Host": host}, body=body)


BASE_HEADERS = {"X-Sdk-Date": SDK_DATE, "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "body"),
    [
        pytest.param("GET", JOB_PATH, [], BASE_HEADERS, b"", id="get-job"),
        pytest.param("GET", JOB_PATH + "/", [], BASE_HEADERS, b"", id="get-trailing-slash"),
        pytest.param("get", JOB_PATH, [], BASE_HEADERS, b"", id="lowercase-method"),
        pytest.param(
            "GET",
            f"/api/v3/projects/{PROJECT_ID}/clusters",
            [("limit", "10"), ("name", "my cluster"), ("label", "环境=生产"), ("tilde", "a~b"), ("a", "")],
            BASE_HEADERS,
            b"",
            id="query-spaces-unicode-tilde",
        ),
        pytest.param(
            "GET",
            "/v3/x",
            [("b", "2"), ("a", "2"), ("a", "1"), ("sym", "!*'();:@&=+$,/?#[]")],
            BASE_HEADERS,
            b"",
            id="query-sorted-and-reserved",
        ),
        pytest.param(
            "POST",
            f"/api/v3/projects/{PROJECT_ID}/clusters",
            [],
            BASE_HEADERS,
            b'{"kind": "Cluster", "apiVersion": "v3", "metadata": {"name": "c\\u00e9"}}',
            id="post-json",
        ),
        pytest.param("PUT", "/v3/a b/c+d/é/~x/!$'()*", [], BASE_HEADERS, b"{}", id="path-needs-encoding"),
        pytest.param("GET", "/v3/already%20encoded/%E6%B5%8B", [], BASE_HEADERS, b"", id="path-percent-encoded"),
        pytest.param("DELETE", "/", [], BASE_HEADERS, b"", id="root-path"),
        pytest.param("GET", JOB_PATH, [], {"X-Sdk-Date": SDK_DATE}, b"", id="minimal-headers"),
        pytest.param(
            "GET",
            JOB_PATH,
            [],
            {
                "X-Sdk-Date": SDK_DATE,
                "Content-Type": "application/json;charset=UTF-8",
                "X-Project-Id": PROJECT_ID,
                "X-Request-Id": "  padded value  ",
                "User-Agent": "cce-monitor/0.1",
                "x_unsigned_header": "skipped by both",
            },
            b"",
            id="more-headers",
        ),
        pytest.param(
            "GET", JOB_PATH, [], {"x-sdk-date": SDK_DATE, "CONTENT-TYPE": "application/json"}, b"", id="header-case"
        ),
    ],
)
def test_matches_vendor_signer(
    method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes
) -> None:
    assert ours(method, path, query, headers, body) == vendor_authorization(method, path, query, headers, body)


def test_exact_value_of_a_job_request() -> None:
    # A fixed expected value, so that a change that broke both signers the same way would still show.
    value = ours("GET", JOB_PATH, [], BASE_HEADERS, b"")
    assert value == vendor_authorization("GET", JOB_PATH, [], BASE_HEADERS, b"")
    assert value.startswith(f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=content-type;host;x-sdk-date, Signature=")
    assert len(value.rsplit("=", 1)[1]) == 64


def test_signature_depends_on_every_part() -> None:
    base = ours("GET", JOB_PATH, [("a", "1")], BASE_HEADERS, b"x")
    variants = [
        ours("POST", JOB_PATH, [("a", "1")], BASE_HEADERS, b"x"),
        ours("GET", JOB_PATH + "0", [("a", "1")], BASE_HEADERS, b"x"),
        ours("GET", JOB_PATH, [("a", "2")], BASE_HEADERS, b"x"),
        ours("GET", JOB_PATH, [("a", "1")], {**BASE_HEADERS, "X-Sdk-Date": "20200202T081241Z"}, b"x"),
        ours("GET", JOB_PATH, [("a", "1")], BASE_HEADERS, b"y"),
        ours("GET", JOB_PATH, [("a", "1")], BASE_HEADERS, b"x", sk=SK + "1"),
        ours("GET", JOB_PATH, [("a", "1")], BASE_HEADERS, b"x", host="cce.example.com"),
    ]
    signatures = {v.rsplit("Signature=", 1)[1] for v in [base, *variants]}
    assert len(signatures) == len(variants) + 1


@pytest.mark.parametrize("missing", ["Host", "X-Sdk-Date"])
def test_authorization_requires_host_and_date(missing: str) -> None:
    headers = {"Host": HOST, "X-Sdk-Date": SDK_DATE}
    del headers[missing]
    with pytest.raises(ValueError, match="Host and X-Sdk-Date"):
        authorization(AK, SK, method="GET", path="/", headers=headers)


def test_unsigned_payload_header_matches_vendor() -> None:
    # The vendor SDK adds this header itself for any Content-Type other than JSON/BSON, then signs the literal
    # "UNSIGNED-PAYLOAD" instead of the body's hash. Here both sides get the very same header set.
    # (Regression: our signer used to hash the body regardless.)
    headers = {"X-Sdk-Date": SDK_DATE, "Content-Type": "text/plain", "X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD"}
    body = b"plain text body"
    expected = vendor_authorization("POST", "/v3/upload", [], headers, body)
    assert ours("POST", "/v3/upload", [], headers, body) == expected


# --- random requests ---------------------------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_segment = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/"), min_size=1, max_size=10)
_header_names = st.sampled_from(
    ["Content-Type", "X-Project-Id", "X-Request-Id", "User-Agent", "Accept", "X-Domain-Id", "x_underscored"]
)
_header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    segments=st.lists(_segment | st.from_regex(r"[A-Za-z0-9._~-]{1,12}", fullmatch=True), max_size=6),
    trailing_slash=st.booleans(),
    query=st.lists(st.tuples(_text, _text), max_size=5),
    extra=st.dictionaries(_header_names, _header_values, max_size=4),
    body=st.binary(max_size=200) | st.text(max_size=100).map(str.encode),
    sk=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40),
    unsigned_payload=st.booleans(),
)
def test_random_requests_match_vendor_signer(
    method: str,
    segments: list[str],
    trailing_slash: bool,
    query: list[tuple[str, str]],
    extra: dict[str, str],
    body: bytes,
    sk: str,
    unsigned_payload: bool,
) -> None:
    path = "/" + "/".join(segments) + ("/" if trailing_slash and segments else "")
    if "Content-Type" in extra:
        # Any other content type makes the vendor add X-Sdk-Content-Sha256 itself; pass it explicitly instead.
        extra["Content-Type"] = "application/json"
    if unsigned_payload:
        extra["X-Sdk-Content-Sha256"] = "UNSIGNED-PAYLOAD"
    headers = {"X-Sdk-Date": SDK_DATE, **extra}
    expected = vendor_authorization(method, path, query, headers, body, sk=sk)
    assert ours(method, path, query, headers, body, sk=sk) == expected


# --- parse_authorization -----------------------------------------------------------------------------------


def test_parse_authorization_round_trip() -> None:
    headers = {**BASE_HEADERS, "X-Project-Id": PROJECT_ID}
    value = ours("GET", JOB_PATH, [], headers, b"")
    parsed = parse_authorization(value)
    assert parsed == ParsedAuthorization(
        access=AK,
        signed_headers=["content-type", "host", "x-project-id", "x-sdk-date"],
        signature=value.rsplit("Signature=", 1)[1],
    )
    assert len(parsed.signature) == 64
    assert SK not in repr(parsed)
    assert parsed.signature not in repr(parsed)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer abc.def.ghi",
        "Basic dXNlcjpwYXNz",
        "SDK-HMAC-SM3 Access=a, SignedHeaders=host, Signature=00",
        "sdk-hmac-sha256 Access=a, SignedHeaders=host, Signature=00",
        "SDK-HMAC-SHA256",
        "SDK-HMAC-SHA256 Access=a, SignedHeaders=host",
        "SDK-HMAC-SHA256 Access=a, Signature=00",
        "SDK-HMAC-SHA256 SignedHeaders=host, Signature=00",
    ],
)
def test_parse_authorization_rejects(value: str) -> None:
    assert parse_authorization(value) is None


# --- X-Sdk-Date --------------------------------------------------------------------------------------------


def test_format_sdk_date() -> None:
    assert format_sdk_date(datetime(2020, 2, 2, 8, 12, 40, 999999, tzinfo=UTC)) == SDK_DATE
    assert format_sdk_date(datetime(2020, 2, 2, 16, 12, 40, tzinfo=timezone(timedelta(hours=8)))) == SDK_DATE
    now = datetime.strptime(format_sdk_date(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


# --- temporary AK/SK: X-Security-Token ----------------------------------------------------------------------

SECURITY_TOKEN = "gQpjbi1ub3J0aC00" + "Sx0L3Jvb3QvRVhBTVBMRS1zdHMtdG9rZW4" * 40  # STS tokens run to kilobytes


def vendor_temporary(
    method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], project_id: str | None = None
) -> SdkRequest:
    """The vendor's request signed by BasicCredentials with a security token (it adds the header, then signs;
    with a project id it adds X-Project-Id too)."""
    request = SdkRequest(
        method=method, schema="https", host=HOST, resource_path=path, uri=path,
        query_params=list(query), header_params=dict(headers), body=b"",
    )  # fmt: skip
    credentials = BasicCredentials(AK, SK, project_id).with_security_token(SECURITY_TOKEN)
    signed: SdkRequest = credentials.sign_request(request)
    return signed


@pytest.mark.parametrize(
    ("path", "query"),
    [(JOB_PATH, []), ("/v3/projects", [("name", "eu-de")])],
    ids=["job", "iam-project-lookup"],
)
def test_security_token_is_signed_like_the_vendor(path: str, query: list[tuple[str, str]]) -> None:
    vendor = vendor_temporary("GET", path, query, BASE_HEADERS)
    assert vendor.header_params["X-Security-Token"] == SECURITY_TOKEN
    ours_value = ours("GET", path, query, {**BASE_HEADERS, "X-Security-Token": SECURITY_TOKEN}, b"")
    assert ours_value == vendor.header_params["Authorization"]
    assert "x-security-token" in ours_value.split("SignedHeaders=")[1].split(",")[0].split(";")


async def test_akskauth_sends_the_security_token_signed_as_the_vendor_does() -> None:
    from yarl import URL  # noqa: PLC0415 - only this test builds a URL

    from monitor.cce.auth import AKSKAuth  # noqa: PLC0415
    from monitor.core.secret import Secret  # noqa: PLC0415

    auth = AKSKAuth(AK, Secret(SK), PROJECT_ID, security_token=Secret(SECURITY_TOKEN))
    headers: dict[str, str] = {"Content-Type": "application/json"}
    await auth.apply(None, "GET", URL(f"https://{HOST}{JOB_PATH}"), headers, b"")  # type: ignore[arg-type]
    assert headers["X-Security-Token"] == SECURITY_TOKEN
    sent = {k: v for k, v in headers.items() if k != "Authorization"}
    vendor = vendor_temporary(
        "GET", JOB_PATH, [], {k: v for k, v in sent.items() if k != "X-Security-Token"}, PROJECT_ID
    )
    assert headers["Authorization"] == vendor.header_params["Authorization"]
    assert SECURITY_TOKEN not in repr(auth)
