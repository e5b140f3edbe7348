"""Stop signals become ``ShutdownRequested`` in the main thread, at once or where the code says."""

from __future__ import annotations

import os
import signal
import time

import pytest
import typer
from typer.testing import CliRunner

from medseg import shutdown
from medseg.cli.errors import MedsegGroup
from tests.fresh_interpreter import in_fresh_interpreter


def _signal_myself(signum: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(1)  # the handler runs in the main thread before the sleep returns
    raise AssertionError("the signal did not stop the code")


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@in_fresh_interpreter
def test_a_stop_signal_raises_in_the_main_thread(signum: int, exit_code: int) -> None:
    with shutdown.stop_signals(), pytest.raises(shutdown.ShutdownRequested) as raised:
        _signal_myself(signum)
    assert raised.value.signum == signum
    assert raised.value.exit_code == exit_code
    assert str(raised.value) == f"stopped by {signal.Signals(signum).name}"
    assert not isinstance(raised.value, Exception)  # per-scan `except Exception` lets it through


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with shutdown.stop_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    assert shutdown.requested() is None


@in_fresh_interpreter
def test_a_deferred_block_finishes_and_raises_at_its_end() -> None:
    steps = []
    with shutdown.stop_signals(), pytest.raises(shutdown.ShutdownRequested):
        with shutdown.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            steps.append("after the signal")
            assert shutdown.requested() == signal.SIGTERM
        steps.append("after the block")
    assert steps == ["after the signal"]


@in_fresh_interpreter
def test_an_interruptible_part_of_a_deferred_block_raises_at_once() -> None:
    with shutdown.stop_signals(), shutdown.deferred():
        with pytest.raises(shutdown.ShutdownRequested), shutdown.interruptible():
            _signal_myself()
        shutdown.raise_if_requested()  # raised once only: cleaning up goes on


@in_fresh_interpreter
def test_a_signal_held_by_a_deferred_block_raises_on_entering_an_interruptible_part() -> None:
    with shutdown.stop_signals(), shutdown.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(shutdown.ShutdownRequested), shutdown.interruptible():
            raise AssertionError("entered the interruptible part")


def _app_with(command) -> typer.Typer:
    """A command line with medseg's root class and one command."""
    cli = typer.Typer(cls=MedsegGroup)
    cli.command("work")(command)
    cli.command("other")(lambda: None)  # two commands: "work" is a subcommand, as in medseg
    return cli


@in_fresh_interpreter
def test_the_cli_maps_a_stop_to_its_exit_code_and_one_line() -> None:
    result = CliRunner().invoke(_app_with(_signal_myself), ["work"])
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines() == [
        "stopped by SIGTERM: finished work is kept; the same command continues it"
    ]


@in_fresh_interpreter
def test_an_error_while_stopping_is_part_of_the_stop() -> None:
    """E.g. a DDP peer that left first: the collective fails on this rank."""

    def fails_in_a_deferred_block() -> None:
        with shutdown.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            raise RuntimeError("connection reset by peer")

    result = CliRunner().invoke(_app_with(fails_in_a_deferred_block), ["work"])
    assert result.exit_code == 143, result.output
    assert "Traceback" not in result.output


def test_an_error_without_a_stop_keeps_its_traceback() -> None:
    def fails() -> None:
        raise RuntimeError("a bug")

    result = CliRunner().invoke(_app_with(fails), ["work"])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)


class _SignalledInFinalizer:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler raises here, where Python can only ignore the exception


def _wait_for_a_stop(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # generous: a loaded machine starts threads late
        time.sleep(0.05)


@in_fresh_interpreter
def test_a_stop_that_lands_where_exceptions_are_ignored_is_delivered_again() -> None:
    with shutdown.stop_signals(), pytest.raises(shutdown.ShutdownRequested):
        _SignalledInFinalizer()  # dropped at once: __del__ runs
        _wait_for_a_stop(30)
        raise AssertionError("the stop was lost")


@in_fresh_interpreter
def test_a_redelivery_still_pending_when_the_block_ends_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sent after the handlers were restored, it would kill the process (pytest's worker)."""
    monkeypatch.setattr(shutdown, "REDELIVER_SECONDS", 0.5)
    with shutdown.stop_signals():
        _SignalledInFinalizer()  # swallowed; sent again in 0.5 s, after the block
    _wait_for_a_stop(1.5)  # still alive: the pending redelivery was dropped
    assert shutdown.requested() is None
