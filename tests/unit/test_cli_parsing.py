"""CLI argument parsing that needs no services."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from fairlane.cli import build_parser, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("30m", timedelta(minutes=30)), ("1d12h", timedelta(days=1, hours=12))],
)
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5x", "h5", "1d 2h", "-3d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration(text)


def test_worker_requires_modules_and_bounds_processes() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["worker"])
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "app.tasks", "--processes", "0"])
    args = parser.parse_args(["worker", "app.tasks", "--processes", "2", "--threads", "8"])
    assert (args.modules, args.processes, args.threads) == (["app.tasks"], 2, 8)
