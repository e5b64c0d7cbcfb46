"""CopyProgress: the running totals a snapshot logs, with a share and an ETA from the planner's estimate."""

from __future__ import annotations

import logging
import time

from airflow_pg_replication.source.snapshot_reads import CopyProgress


def test_outlook_gives_share_and_eta_from_the_rate_so_far() -> None:
    progress = CopyProgress("public.customers", expected_rows=1_000_000, started=time.monotonic() - 10)
    progress.rows = 250_000  # 25,000 rows/s: 750,000 rows left take ~30 s
    text = progress.outlook()
    assert text.startswith("; ~25 % of ~1,000,000 rows (planner estimate), ETA ~")
    assert 29 <= int(text.rsplit("~", 1)[1].split()[0]) <= 31


def test_no_outlook_without_an_estimate_or_past_it() -> None:
    assert CopyProgress("t").outlook() == ""  # never analyzed: no estimate
    past = CopyProgress("t", expected_rows=100)
    past.rows = 150  # the estimate was low: no share above 100 %, no negative ETA
    assert past.outlook() == ""


def test_tick_logs_every_few_seconds_with_the_outlook(caplog) -> None:
    progress = CopyProgress("public.customers", every=0.0, expected_rows=1_000)
    with caplog.at_level(logging.INFO, logger="airflow_pg_replication.source.snapshot_reads"):
        progress.tick(100)
    assert "public.customers: 100 rows" in caplog.text and "% of ~1,000 rows (planner estimate), ETA ~" in caplog.text
