"""The short version of ``bench/cluster_soak.py``: three replicas on a throwaway PostgreSQL, a kill -9, a rejoin
and a SIGTERM, judged against the simulator's truth (the full one is run by hand; its figures are in the README,
"High availability")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]

# Fails in CI, skips elsewhere, without the server binaries; counts arrivals per second, so it runs alone (solo).
pytestmark = [pytest.mark.usefixtures("postgres"), pytest.mark.solo]


@pytest.mark.timeout(300)
def test_three_replicas_lose_nothing_through_a_kill_a_rejoin_and_a_sigterm(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "cluster_soak.py"), "--short", "--no-save"]
    cmd += ["--jobs", "300", "--rollouts", "3", "--rate", "30", "--minutes", "0.75", "--duration", "0.8"]
    cmd += ["--ttl", "3", "--interval", "2", "--balance-after", "10", "--limit", "240"]
    cmd += ["--workdir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT / "bench")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result (exit {done.returncode}): {done.stderr[-3000:]}"
    result = orjson.loads(lines[0])
    failed = [name for name, ok in result["checks"].items() if not ok]
    assert not failed and done.returncode == 0, f"{failed}: {done.stdout[-3000:]}"
    assert result["takeover_s"]["sigkill"] <= 3 + 1 + 1, "ttl + a round (+ a second of slack on a busy machine)"
    assert result["takeover_s"]["sigterm"] <= 2
    assert result["stale_writes"] == 0 and result["rate"]["windows_over"] == 0
    assert all(s["lost"] == 0 for s in result["sinks"].values())
