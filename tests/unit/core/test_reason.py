"""Readable failure reasons (``monitor.core.reason``): embedded JSON error objects shown as ``code: message``."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.reason import readable_reason

ECS = 'Create node vm failed: {"error":{"code":"Ecs.0319","message":"The ECS quota is insufficient."}}'


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (ECS, "Create node vm failed: Ecs.0319: The ECS quota is insufficient."),
        ('{"errorCode":"CCE.01400001","errorMessage":"Invalid name"}', "CCE.01400001: Invalid name"),
        (
            'install failed: {"error_code":"APIGW.0301","error_msg":"Incorrect token"}',
            "install failed: APIGW.0301: Incorrect token",
        ),
        ('step 2 {"code":"E.1","message":"disk full"} (after 3 tries)', "step 2 E.1: disk full (after 3 tries)"),
        # a brace in the prefix that is not JSON, then the object
        ('template {name} failed: {"code":"E.2","message":"m"}', "template {name} failed: E.2: m"),
        # escapes and braces inside strings
        (r'x: {"code":"E.3","message":"bad \"name\" {a} \\ \u00e9"}', 'x: E.3: bad "name" {a} \\ é'),
        # a message that embeds another object
        (r'a: {"code":"E.4","message":"inner: {\"code\":\"E.5\",\"message\":\"deep\"}"}', "a: E.4: inner: E.5: deep"),
        # no code, or a numeric (HTTP status) code: the message alone
        ('failed: {"message":"no code"}', "failed: no code"),
        ('{"error":{"code":401,"title":"Unauthorized","message":"wrong password"}}', "wrong password"),
        # the message already starts with the code
        ('{"code":"Ecs.0319","message":"Ecs.0319 quota"}', "Ecs.0319 quota"),
    ],
)
def test_embedded_error_objects_are_readable(raw: str, shown: str) -> None:
    assert readable_reason(raw) == shown


@pytest.mark.parametrize(
    "raw",
    [
        ECS[:-10],  # truncated
        'Create node vm failed: {"error":{"code":"Ecs.0319","message":"The ECS quo',
        "failed: {not json at all}",
        'failed: {"foo": 1, "bar": [1, 2]}',  # an object, but not an error we know
        'failed: {"message": ""}',
        'failed: {"message": 42}',
        "failed: [1, 2, 3]",
        "{" * 10_000,
        '{"a":' * 5_000 + "1" + "}" * 5_000,  # valid but far too deep for the decoder
        "plain text",
        "",
    ],
)
def test_anything_else_is_left_as_it_is(raw: str) -> None:
    assert readable_reason(raw) == raw


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_and_leaves_text_without_braces_alone(text: str) -> None:
    result = readable_reason(text)
    assert isinstance(result, str)
    if "{" not in text:
        assert result == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.text(), json_values, st.text(), st.integers(0, 200))
def test_never_raises_on_json_cut_anywhere(prefix: str, value: object, suffix: str, cut: int) -> None:
    body = json.dumps(value)
    assert isinstance(readable_reason(prefix + body[:cut] + suffix), str)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_characters="{"), max_size=40),
    st.text(alphabet=st.characters(blacklist_characters="{"), min_size=1, max_size=40).filter(str.strip),
    st.text(alphabet=st.characters(blacklist_characters="{"), min_size=1, max_size=80).filter(str.strip),
)
def test_any_code_and_message_come_out(prefix: str, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}})
    result = readable_reason(prefix + body)
    assert message.strip() in result
    assert result.endswith(message.strip())
