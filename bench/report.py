"""Report lines: labelled rows, PASS/FAIL verdicts, the machine's load and the code measured."""

from __future__ import annotations

import os
import subprocess

from env import REPO


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}")


def machine_note() -> str:
    """CPUs and load: other processes on the machine make timings noisy."""
    la = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} (1/5/15 min)"


def package_state() -> str:
    """Which code was measured: git commit and the package files modified since (others edit in parallel)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "airflow_pg_replication"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "package version: unknown (no git)"
    files = [ln[3:] for ln in dirty if ln.strip()]
    return f"package: git {sha}" + (f" + {len(files)} uncommitted file(s) in airflow_pg_replication/" if files else "")
