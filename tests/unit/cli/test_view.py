"""The live view of ``watch`` (``monitor.cli.view``), rendered into a recording rich console and read back as text."""

from __future__ import annotations

import io
import re
from typing import Any

from rich.console import Console

from monitor.cli.view import LiveView
from monitor.core.events import Event, EventType, event_id
from monitor.engine.pipeline import watch
from monitor.engine.scheduler import SchedulerSettings
from tests.conftest import Recorder, SimFactory, client_for

ECS = 'Create node vm failed: {"error":{"code":"Ecs.0319","message":"The ECS quota is insufficient."}}'
READABLE = "Create node vm failed: Ecs.0319: The ECS quota is insufficient."


def console(width: int = 200, height: int = 40) -> Console:
    return Console(file=io.StringIO(), record=True, width=width, height=height, color_system=None)


def rendered(view: LiveView) -> list[str]:
    view.console.print(view.render())
    return [line.rstrip() for line in view.console.export_text().splitlines()]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")]


def progress(lines: list[str]) -> list[str]:
    """The progress lines, without the bar at their start (one line each: the bar and its text)."""
    return [re.sub(r"^[━╺╸ ]+", "", line) for line in lines if "finished" in line or " nodes " in line]


def bars(lines: list[str]) -> int:
    """Progress bars drawn (the table's header rule is drawn with the same character, crossed by ╇)."""
    return sum("━" in line and "╇" not in line for line in lines)


def job_event(job: str, phase: str, **extra: Any) -> Event:
    return Event(
        id=event_id(job, phase),
        type=EventType.JOB_PHASE_CHANGED,
        project_id="p",
        job_id=job,
        job_type="CreateNode",
        phase=phase,
        **extra,
    )


def digest(name: str, total: int, finished: int, counts: dict[str, int]) -> Event:
    summary = {"rollout": name, "total": total, "finished": finished, "counts": counts}
    return Event(id=name, type=EventType.ROLLOUT_PROGRESS, project_id="p", job_id=None, rollout=name, summary=summary)


def test_one_line_and_one_bar_per_rollout() -> None:
    view = LiveView(["j1", "j2", "j3"], console=console(), title="cce-monitor demo")
    view.on_event(job_event("j1", "Success"))
    view.on_event(job_event("j2", "Running"))
    view.on_event(digest("demo", 3, 1, {"Success": 1, "Running": 1, "waiting": 1}))
    lines = rendered(view)
    assert progress(lines) == ["demo: 1/3 finished (1 Success, 1 Running, 1 waiting)"], lines
    assert bars(lines) == 1, lines
    [line] = [line for line in lines if "━" in line and "╇" not in line]
    assert line.endswith("demo: 1/3 finished (1 Success, 1 Running, 1 waiting)"), "the bar and its text: one line"
    assert not any("cce-monitor" in line for line in lines), lines


def test_two_rollouts_two_lines_two_bars() -> None:
    view = LiveView(["a1", "a2", "b1"], console=console())
    view.on_event(digest("pool-a", 2, 1, {"Success": 1, "Running": 1}))
    view.on_event(digest("pool-b", 1, 1, {"Success": 1}))
    lines = rendered(view)
    assert progress(lines) == [
        "pool-a: 1/2 finished (1 Success, 1 Running)",
        "pool-b: 1/1 finished (1 Success)",
    ]
    assert bars(lines) == 2, lines


def test_without_a_rollout_the_view_counts_its_own_jobs() -> None:
    view = LiveView(["j1", "j2"], console=console(), title="cce-monitor")
    view.on_event(job_event("j1", "Success"))
    lines = rendered(view)
    assert progress(lines) == ["cce-monitor  1/2 finished  Success 1  waiting 1"]
    assert bars(lines) == 1, lines


def test_rows_and_printed_lines_show_the_resource_name_and_a_readable_reason() -> None:
    view = LiveView(["j1", "j2"], console=console())
    view.on_event(job_event("j1", "Running", resource_name="pool-a-node-7"))
    failed = job_event("j1", "Failed", reason=ECS)  # later events may omit the name: the row keeps it
    view.on_event(failed)
    view.on_event(job_event("j2", "Running", resource_name="pool-a-node-8"))
    lines = rendered(view)
    [printed] = [line for line in lines if "Failed" in line and ":" in line[:3]]  # "HH:MM:SS j1 name Failed …"
    assert printed.split()[1:4] == ["j1", "pool-a-node-7", "Failed"], printed
    assert printed.endswith(READABLE), printed
    [row] = [line for line in lines if line.startswith("j1 ")]
    assert cells(row) == ["j1", "pool-a-node-7", "CreateNode", "Failed", "", READABLE], row
    assert cells(next(line for line in lines if line.startswith("j2 ")))[:2] == ["j2", "pool-a-node-8"]
    assert failed.reason == ECS  # the event itself keeps the raw reason
    assert not any('{"error"' in line for line in lines), lines


def test_a_job_that_rolls_out_nodes_gets_a_row_per_node_with_its_name_and_id() -> None:
    view = LiveView(["scale"], console=console())
    common = {"type": EventType.SUBJOB_PHASE_CHANGED, "project_id": "p", "job_id": "scale", "subjob_type": "CreateNode"}
    view.on_event(Event(id="1", phase="Running", subjob_id="sub-a", resource_name="node-a", **common))  # type: ignore[arg-type]
    view.on_event(Event(id="2", phase="Running", subjob_id="sub-b", resource_name="node-b", **common))  # type: ignore[arg-type]
    view.on_event(Event(id="3", phase="Success", subjob_id="sub-a", node_id="nid-a", **common))  # type: ignore[arg-type]
    view.on_event(
        Event(id="4", type=EventType.NODE_ACTIVE, project_id="p", job_id="scale", phase="Active", node_id="nid-a")
    )
    view.on_event(Event(id="5", phase="Failed", subjob_id="sub-b", reason=ECS, **common))  # type: ignore[arg-type]
    view.on_event(Event(id="6", type=EventType.JOB_PHASE_CHANGED, project_id="p", job_id="scale", phase="Failed"))
    lines = rendered(view)
    rows = {cells(line)[1]: cells(line) for line in lines if "└" in line}
    assert rows["node-a"][0] == "└ nid-a" and rows["node-a"][3] == "Active", rows
    assert rows["node-b"][0] == "└ sub-b" and rows["node-b"][3] == "Failed", rows
    assert rows["node-b"][5] == READABLE, rows
    order = [cells(line)[0] for line in lines if line.startswith(("scale", "  └"))]
    assert order[0] == "scale" and len(order) == 3, "the nodes come under their job"


async def test_watch_against_the_simulator_shows_readable_reasons(sim_factory: SimFactory) -> None:
    """End to end: CCE's JSON-laden reasons reach the sinks raw and the view readable, with node names."""
    sim, _ = await sim_factory(seed=3)
    ids = [sim.add_job("CreateNode", fail=True, duration=0.4) for _ in range(6)]
    view = LiveView(ids, console=console(width=240, height=60))
    recorder = Recorder()
    settings = SchedulerSettings(rate=100.0, interval=0.1, min_interval=0.05, max_interval=0.2, job_timeout=20.0)
    async with client_for(sim) as client:
        await watch(ids, client=client, settings=settings, observers=[view.on_event, recorder], rollout="demo")
    failed = [e for e in recorder.of(EventType.JOB_PHASE_CHANGED) if e.phase == "Failed"]
    assert {e.job_id for e in failed} == set(ids)
    raw = [e for e in failed if e.reason and '{"error"' in e.reason]
    assert raw, [e.reason for e in failed]  # the sinks see the reason as CCE sent it
    lines = rendered(view)
    assert not any('{"error"' in line for line in lines), lines
    assert any("Create node vm failed: Ecs.0" in line for line in lines), lines
    names = {e.resource_name for e in recorder.events if e.resource_name}
    assert names and all(any(name in line for line in lines) for name in names), (names, lines)
    [line] = progress(lines)
    assert line.startswith("demo: 6/6 finished (6 Failed"), lines
    assert bars(lines) == 1, lines


async def test_a_failed_pool_node_shows_its_deepest_reason(sim_factory: SimFactory) -> None:
    """A pool node's CreateNode fails with CCE's generic reason; its row shows the failed step's, as the
    rollout digest names it."""
    from monitor.engine.pipeline import NodePoolTarget  # noqa: PLC0415
    from monitor.sim.shapes import NODE_ROLLUP  # noqa: PLC0415

    sim, _ = await sim_factory(time_scale=0.05, seed=4)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, fail=1, node_duration=2.0)
    sim.scale_nodepool(cluster, pool, 2)
    view = LiveView([], console=console(width=240, height=60))
    recorder = Recorder()
    settings = SchedulerSettings(rate=100.0, interval=0.1, min_interval=0.05, max_interval=0.2, job_timeout=20.0)
    async with client_for(sim) as client:
        await watch(
            [], client=client, settings=settings, observers=[view.on_event, recorder], rollout="pool",
            rollout_interval=0.2, nodepools=(NodePoolTarget(cluster, pool),),
        )  # fmt: skip
    [failed] = [e for e in recorder.of(EventType.JOB_PHASE_CHANGED) if e.phase == "Failed"]
    assert failed.reason == NODE_ROLLUP
    [line] = [line for line in rendered(view) if line.startswith(failed.job_id)]
    assert NODE_ROLLUP not in line and "failed" in cells(line)[5].lower(), line
