"""The SVG pictures (``monitor.ui.svg``) and the report (``monitor.ui.report``, ``cce-monitor report``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from xml.etree import ElementTree

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.cli import cli
from monitor.core.events import EventType
from monitor.core.text import printable
from monitor.engine.timeline import build_timeline
from monitor.testing import EVENT_TIME, make_event
from monitor.ui.report import parse_events, render_report
from monitor.ui.svg import progress_svg, timeline_svg

SVG = "{http://www.w3.org/2000/svg}"


def failed_job(job_id: str, reason: str, name: str = "node-1", rollout: str = "r1") -> list[bytes]:
    return [
        make_event(
            job_id=job_id, phase="Running", previous_phase=None, reason=None, resource_name=name, rollout=rollout
        ).to_json(),
        make_event(
            job_id=job_id, reason=reason, resource_name=name, rollout=rollout, time=EVENT_TIME + timedelta(seconds=30)
        ).to_json(),
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.text(max_size=200))
def test_any_name_or_reason_makes_well_formed_svg_that_shows_it_as_text(name: str, reason: str) -> None:
    events = parse_events(failed_job("j1", reason or "x", name or "n")).events
    svg = timeline_svg(build_timeline(events))
    root = ElementTree.fromstring(svg)  # raises on anything XML cannot hold or any markup that got through
    assert root.tag == f"{SVG}svg"
    assert {el.tag.removeprefix(SVG) for el in root.iter()} <= {
        "svg",
        "title",
        "g",
        "rect",
        "text",
        "line",
        "path",
        "circle",
    }
    titles = " ".join(el.text or "" for el in root.iter(f"{SVG}title"))
    shown = printable(reason or "x", " ").replace("\ufffe", " ").replace("\uffff", " ")
    if len(shown) < 250:
        assert shown in titles, "the reason reads as it was, as text"


def test_progress_bar_parts_follow_the_counts() -> None:
    root = ElementTree.fromstring(progress_svg({"Active": 3, "Failed": 1}, width=400))
    parts = [(r.get("width"), "".join(r.itertext())) for r in root.iter(f"{SVG}rect") if len(r)]
    assert parts == [("300.0", "Active: 3"), ("100.0", "Failed: 1")]


def test_the_report_escapes_outside_text_and_counts_bad_lines() -> None:
    lines = [*failed_job("j1", '<script>alert(1)</script>"&'), b"", b"not json", b"[1]", b'{"type": "nope"}']
    read = parse_events(lines)
    assert (len(read.events), read.skipped) == (2, 3)
    assert read.problems[0].startswith("line 4: ") and read.problems[1] == "line 5: not a JSON object"
    html = render_report(read, source="events.jsonl")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;" in html
    assert "3 lines were not events and were skipped" in html
    assert "<h2>r1</h2>" in html and "Failures (1)" in html


def test_newer_fields_are_ignored_and_a_missing_rollout_is_named() -> None:
    line = make_event(rollout="r1").to_json()[:-1] + b',"added_in_v2":1}'
    read = parse_events([line])
    assert read.skipped == 0
    try:
        render_report(read, rollout="r9")
    except LookupError as exc:
        assert str(exc) == "rollout 'r9' is not in the events; rollouts there: r1"
    else:
        raise AssertionError("no LookupError")


def test_the_report_command(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join([*failed_job("j1", "boom"), *failed_job("j2", "bang", "node-2", "r2")]) + b"\n")
    out = tmp_path / "out.html"
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(events), "--rollout", "r2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "node-2" in page and "bang" in page and "node-1" not in page
    assert not list(tmp_path.glob("*.tmp-*")), "written then renamed"
    result = runner.invoke(cli, ["report", str(events), "--rollout", "r3", "-o", str(out)])
    assert result.exit_code == 2 and "rollout 'r3' is not in the events; rollouts there: r1, r2" in result.output
    result = runner.invoke(cli, ["report", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "cannot read" in result.output
    (tmp_path / "empty.jsonl").write_bytes(b"garbage\n")
    result = runner.invoke(cli, ["report", str(tmp_path / "empty.jsonl"), "-o", str(out)])
    assert result.exit_code == 2 and "holds no cce-monitor events" in result.output
    result = runner.invoke(cli, ["report", str(events), "-o", "-"])
    assert result.exit_code == 0 and result.output.startswith("<!DOCTYPE html>")
    result = runner.invoke(cli, ["report", str(events), "-o", str(tmp_path / "no" / "dir.html")])
    assert result.exit_code == 2 and "cannot write" in result.output


def test_a_report_of_node_events_counts_what_the_node_check_saw() -> None:
    events = [
        make_event(
            type=EventType.SUBJOB_PHASE_CHANGED,
            job_id="s",
            subjob_id="n1",
            subjob_type="CreateNode",
            phase="Success",
            reason=None,
        ),
        make_event(
            type=EventType.NODE_FAILED,
            job_id="s",
            subjob_id="n1",
            phase="Abnormal",
            reason="node is Abnormal after its job succeeded",
            time=EVENT_TIME + timedelta(seconds=5),
        ),
    ]
    timeline = build_timeline(events)
    assert timeline.counts == {"Abnormal": 1}
    assert timeline.failures[0].reason == "node is Abnormal after its job succeeded"
