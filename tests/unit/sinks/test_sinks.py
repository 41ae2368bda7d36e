"""The ``log`` and ``file`` sinks, and their lookup through the registry."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.core.errors import ConfigError, SinkError
from monitor.core.events import Event, EventType, event_id
from monitor.sinks import Sink, create_sink, is_durable
from monitor.sinks.chat import ChatSink
from monitor.sinks.file import FileSink, FileSinkSettings, make_file_sink
from monitor.sinks.log import LogSink, LogSinkSettings, format_text, make_log_sink
from monitor.sinks.webhook import WebhookSink
from monitor.testing import JOB_ID, make_event

# --- log -------------------------------------------------------------------------------------------------


async def test_log_text_line() -> None:
    out = io.StringIO()
    sink = LogSink(LogSinkSettings(stream=out))
    await sink.send(make_event())
    await sink.aclose()
    assert out.getvalue() == (
        f"2026-11-28T06:41:00Z job.phase_changed {JOB_ID} CreateNode Running -> Failed "
        'reason="Install node failed: timeout"\n'
    )


async def test_log_text_subjob_previous_none_and_detail() -> None:
    out = io.StringIO()
    sink = LogSink(LogSinkSettings(stream=out))
    event = make_event(
        type=EventType.SUBJOB_PHASE_CHANGED,
        subjob_id="sub-1",
        subjob_type="InstallNode",
        previous_phase=None,
        phase="Running",
        reason=None,
        detail='line one\nline two "quoted"\r\u2028end',
    )
    await sink.send(event)
    line = out.getvalue()
    assert line.count("\n") == 1 and line.endswith("\n")
    assert line == (
        f"2026-11-28T06:41:00Z subjob.phase_changed {JOB_ID} CreateNode subjob=sub-1 InstallNode - -> Running "
        'detail="line one\\nline two \\"quoted\\"\\r\\u2028end"\n'
    )


def test_log_text_other_event_types_show_phase() -> None:
    event = make_event(
        type=EventType.JOB_STALLED, previous_phase=None, phase="Running", reason=None, detail="no progress for 30m"
    )
    assert format_text(event) == (
        f'2026-11-28T06:41:00Z job.stalled {JOB_ID} CreateNode phase=Running detail="no progress for 30m"'
    )


@given(st.text(), st.text(), st.text(min_size=1))
def test_log_text_is_always_one_line(reason: str, detail: str, phase: str) -> None:
    line = format_text(make_event(reason=reason, detail=detail, phase=phase))
    assert len(line.splitlines()) == 1
    assert len(f"{line}\n".splitlines()) == 1


async def test_log_json_line_parses_back() -> None:
    out = io.StringIO()
    sink = LogSink(LogSinkSettings(stream=out, format="json"))
    events = [make_event(), make_event(id=event_id("other"), reason="a\nb")]
    for event in events:
        await sink.send(event)
    lines = out.getvalue().splitlines()
    assert [orjson.loads(line) for line in lines] == [event.to_dict() for event in events]


async def test_log_factory_streams(capsys: pytest.CaptureFixture[str]) -> None:
    stdout_sink = create_sink("log")
    stderr_sink = create_sink("log", {"stream": "stderr", "format": "json"})
    shorthand = create_sink("log:stderr")
    assert isinstance(stdout_sink, Sink)
    assert (stdout_sink.name, stderr_sink.name, shorthand.name) == ("log:stdout", "log:stderr", "log:stderr")
    await stdout_sink.send(make_event())
    await stderr_sink.send(make_event())
    captured = capsys.readouterr()
    assert captured.out.startswith("2026-11-28T06:41:00Z job.phase_changed")
    assert orjson.loads(captured.err) == make_event().to_dict()
    for sink in (stdout_sink, stderr_sink, shorthand):
        await sink.aclose()


def test_log_factory_accepts_a_stream_object() -> None:
    out = io.StringIO()
    sink = make_log_sink(None, {"stream": out})
    assert isinstance(sink, LogSink) and sink.settings.stream is out


@pytest.mark.parametrize(
    ("target", "options", "key"),
    [
        (None, {"colour": True}, "colour"),
        (None, {"stream": "stdlog"}, "stream"),
        (None, {"stream": 3}, "stream"),
        (None, {"format": "yaml"}, "format"),
        ("stderr", {"stream": "stdout"}, "stream"),
    ],
)
def test_log_factory_rejects_bad_options(target: str | None, options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make_log_sink(target, options)


async def test_log_send_after_close_fails() -> None:
    sink = LogSink(LogSinkSettings(stream=io.StringIO()))
    await sink.aclose()
    with pytest.raises(SinkError) as info:
        await sink.send(make_event())
    assert not info.value.retryable


# --- file ------------------------------------------------------------------------------------------------


async def test_file_writes_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = make_file_sink(str(path), {})
    events = [make_event(), make_event(id=event_id("x"), detail="multi\nline")]
    for event in events:
        await sink.send(event)
        # Flushed per event: the line is there before the sink closes.
        assert path.read_bytes().endswith(event.to_json() + b"\n")
    await sink.aclose()
    assert [orjson.loads(line) for line in path.read_bytes().splitlines()] == [e.to_dict() for e in events]


async def test_file_appends_across_instances_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = make_event()
    second = make_event(id=event_id("second"))
    for event in (first, second):
        sink = make_file_sink(str(path), {"fsync": True})
        await sink.send(event)
        await sink.aclose()
    assert path.read_bytes() == first.to_json() + b"\n" + second.to_json() + b"\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_file_keeps_wider_permissions_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")
    path.chmod(0o644)
    sink = make_file_sink(str(path), {})
    await sink.send(make_event())
    await sink.aclose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() == make_event().to_json() + b"\n"


def test_file_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "x" / "y"
    with pytest.raises(ConfigError, match=f"file sink: directory {missing} does not exist"):
        create_sink(f"file:{missing}/events.jsonl")


@pytest.mark.parametrize(
    ("target", "options", "match"),
    [
        (None, {}, "path is required"),
        ("", {}, "path is required"),
        ("{dir}/e.jsonl", {"fsync": "yes"}, "'fsync'"),
        ("{dir}/e.jsonl", {"mode": 0o644}, "'mode'"),
        ("{dir}", {}, "is a directory"),
    ],
)
def test_file_factory_rejects_bad_config(
    tmp_path: Path, target: str | None, options: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        make_file_sink(target.format(dir=tmp_path) if target else target, options)


async def test_file_registry_lookup(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = create_sink(f"file:{path}")
    assert isinstance(sink, FileSink) and isinstance(sink, Sink)
    assert sink.name == f"file:{path}"
    await sink.send(make_event())
    await sink.aclose()
    assert orjson.loads(path.read_bytes()) == make_event().to_dict()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_file_write_error_is_retryable() -> None:
    sink = FileSink(FileSinkSettings(path=Path("/dev/full")))
    with pytest.raises(SinkError) as info:
        await sink.send(make_event())
    assert info.value.retryable
    assert "file:/dev/full" in str(info.value)
    await sink.aclose()


async def test_file_send_after_close_fails(tmp_path: Path) -> None:
    sink = make_file_sink(str(tmp_path / "e.jsonl"), {})
    await sink.aclose()
    await sink.aclose()  # idempotent
    with pytest.raises(SinkError) as info:
        await sink.send(make_event())
    assert not info.value.retryable


# ------------------------------------------------------------------------------------------------- durable


def test_every_built_in_sink_declares_durable() -> None:
    expected = {LogSink: False, FileSink: True, WebhookSink: True, ChatSink: True}
    for cls, durable in expected.items():
        assert "durable" in vars(cls), cls
        assert cls.durable is durable


async def test_is_durable_reads_the_attribute_and_defaults_to_false(tmp_path: Path) -> None:
    class ThirdParty:  # written before ``durable`` was part of the contract
        name = "third-party"

        async def send(self, event: Event) -> None:
            pass

        async def aclose(self) -> None:
            pass

    class Durable(ThirdParty):
        durable = True

    assert isinstance(ThirdParty(), Sink)  # still a sink
    assert not is_durable(ThirdParty()) and is_durable(Durable())
    file_sink = create_sink(f"file:{tmp_path / 'e.jsonl'}")
    assert is_durable(file_sink) and not is_durable(create_sink("log"))
    await file_sink.aclose()


async def test_fsynced_events_sent_at_once_are_whole_lines_written_and_fsynced_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox sends several events at once (one per job): with fsync they are written in batches, each
    line whole, one fsync per batch, and every send returns only once its line is on disk."""
    import asyncio  # noqa: PLC0415

    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(len(path.read_bytes().splitlines()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    path = tmp_path / "e.jsonl"
    sink = make_file_sink(str(path), {"fsync": True})
    events = [make_event(id=f"{n:032x}", job_id=f"job-{n}", reason="x" * 5000) for n in range(40)]

    async def send(event: Event) -> int:
        await sink.send(event)
        return fsyncs[-1] if fsyncs else 0  # lines on disk when the last fsync before this return began

    on_disk = await asyncio.gather(*(send(e) for e in events))
    await sink.aclose()
    lines = path.read_bytes().splitlines()
    assert sorted(orjson.loads(line)["id"] for line in lines) == sorted(e.id for e in events)
    assert 1 < len(fsyncs) < len(events) / 4, fsyncs  # the first alone, then the rest together
    for line_count, event in zip(on_disk, events, strict=True):
        index = next(i for i, line in enumerate(lines) if orjson.loads(line)["id"] == event.id)
        assert index < line_count, "a send returned before its line was fsync'd"
