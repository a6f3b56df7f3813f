"""The drain benchmark's command line (loadtests/drain.py): its options, without running it."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from loadtests import drain

app = typer.Typer(add_completion=False)
app.command()(drain.main)


def test_help_names_the_backlog_the_consumer_counts_and_the_outputs() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--orders", "--consumers", "--interval", "--rabbit-url", "--output", "--png"):
        assert option in result.output


def test_consumer_counts_are_read_in_order() -> None:
    assert drain.consumer_counts("1,2,4") == [1, 2, 4]
    assert drain.consumer_counts(" 4, 1 ") == [4, 1]


@pytest.mark.parametrize("text", ["", "0,2", "1,10", "two"])
def test_a_consumer_count_without_a_port_of_its_own_is_refused(text: str) -> None:
    with pytest.raises((typer.BadParameter, ValueError)):
        drain.consumer_counts(text)


def test_a_bad_consumer_count_stops_before_anything_starts() -> None:
    result = CliRunner().invoke(app, ["--consumers", "0"])
    assert result.exit_code != 0
    assert "consumer counts are 1 to 9" in result.output


def test_the_default_broker_is_a_vhost_of_its_own() -> None:
    assert not drain.DEFAULT_URL.endswith("5672/")
    assert drain.DEFAULT_URL.rsplit("/", 1)[1] == "warren-drain"
