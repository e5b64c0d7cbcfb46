"""Cutting a table into page ranges, and the machine's default number of readers."""

from __future__ import annotations

import pytest

from airflow_pg_replication.source.snapshot_ranges import PageRange, default_parallelism, plan_page_ranges


def test_ranges_cover_every_page_and_the_last_is_open_ended():
    ranges = plan_page_ranges(20_000, range_pages=8192)
    assert ranges == [PageRange(0, 0, 8192), PageRange(1, 8192, 16384), PageRange(2, 16384, None)]


def test_an_empty_table_is_one_open_range():
    assert plan_page_ranges(0) == [PageRange(0, 0, None)]


def test_range_pages_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        plan_page_ranges(10, range_pages=0)


def test_where_is_a_tid_range_condition():
    assert PageRange(1, 8, 16).where().as_string() == "ctid >= '(8,0)'::tid AND ctid < '(16,0)'::tid"
    assert PageRange(2, 16, None).where().as_string() == "ctid >= '(16,0)'::tid"


@pytest.mark.parametrize(("cpus", "readers"), [(1, 1), (2, 1), (4, 2), (8, 4), (64, 4)])
def test_default_parallelism_is_half_the_cpus_within_one_to_four(cpus, readers):
    assert default_parallelism(cpus) == readers
