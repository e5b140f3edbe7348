"""The command line's error policy, applied to every command in one place.

- A user error (a ``MedsegError``: bad input, configuration, option, unreachable service,
  unknown model; or a usage error found while parsing the arguments) prints one line
  ``error: <where>: <what>`` on stderr and exits with ``EXIT_USER_ERROR`` (2). The traceback
  is printed too only under ``medseg --verbose``.
- Per-scan failures are not errors here: the commands report them and exit with
  ``EXIT_SOME_FAILED`` (1).
- Anything else is a bug and keeps its traceback.
- SIGTERM and SIGINT stop the command (``medseg.shutdown``): one line ``stopped by SIGTERM``
  and exit 128 + the signal number (143, 130). An error that escapes while the command is
  stopping (a DDP peer that already left, a worker pool shut down under it) is part of the
  stop and exits the same way.

``MedsegGroup`` is the root command's class, so the policy also holds when the app is invoked
directly (``typer.testing.CliRunner``), not only through ``medseg.cli.main``.
"""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Any

import typer
from typer._click import Context, Parameter  # typer 0.29 vendors click: its own exception classes
from typer._click.exceptions import BadParameter, ClickException, MissingParameter
from typer.core import TyperGroup

from medseg import shutdown
from medseg.errors import MedsegError

EXIT_SOME_FAILED = 1
"""Some scans or cases failed; the others were done and written."""
EXIT_USER_ERROR = 2
"""The command could not do its work: bad input, configuration, option or service."""


def print_error(where: str, problem: str) -> None:
    """Print the one-line form of a user error on stderr."""
    message = f"{where}: {problem}" if where else problem
    typer.secho(f"error: {' '.join(message.split())}", fg="red", err=True)


def _usage_error_parts(error: ClickException) -> tuple[str, str]:
    """``(where, what)`` of a click usage error: the command and option, and the problem."""
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else "medseg"
    if isinstance(error, BadParameter) and not isinstance(error, MissingParameter):
        hint = error.param_hint
        if hint is None and error.param is not None:
            hint = _parameter_name(error.param)
        if isinstance(hint, list | tuple):
            hint = " / ".join(hint)
        where = f"{command} {hint}".strip() if hint else command
        return where, error.message.removeprefix("Value error, ").rstrip(".")
    return command, f"{error.format_message().rstrip('.')} (see '{command} --help')"


def _parameter_name(parameter: Parameter) -> str:
    """How the help names a parameter: its long option (``--out``) or its metavar (``OUT``)."""
    if parameter.param_type_name == "argument":
        return parameter.metavar or (parameter.name or "").upper()
    options = list(getattr(parameter, "opts", []) or [parameter.name or ""])
    return next((o for o in options if o.startswith("--")), options[0])


class MedsegGroup(TyperGroup):
    """The root command: runs a subcommand under the error policy of this module."""

    def invoke(self, ctx: Context) -> Any:
        with shutdown.stop_signals():
            try:
                return self._invoke_under_policy(ctx)
            except (shutdown.ShutdownRequested, KeyboardInterrupt, Exception) as error:
                stopped_by = _stop_signal(error)
                if stopped_by is None:
                    raise
                if _verbose(ctx):
                    traceback.print_exception(error, file=sys.stderr)
                print_stopped(stopped_by)
                raise typer.Exit(128 + stopped_by) from error

    def _invoke_under_policy(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClickException as error:  # a subcommand's arguments did not parse
            print_error(*_usage_error_parts(error))
            raise typer.Exit(EXIT_USER_ERROR) from error
        except MedsegError as error:
            if _verbose(ctx):
                traceback.print_exception(error, file=sys.stderr)
            print_error("", str(error))
            raise typer.Exit(EXIT_USER_ERROR) from error


def print_stopped(signum: int) -> None:
    """Print the one line of a command stopped by a signal."""
    name = signal.Signals(signum).name
    typer.secho(
        f"stopped by {name}: finished work is kept; the same command continues it",
        fg="yellow",
        err=True,
    )


def _stop_signal(error: BaseException) -> int | None:
    """The signal that stopped the command, if ``error`` is (part of) a stop."""
    if isinstance(error, shutdown.ShutdownRequested):
        return error.signum
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(error, typer.Exit):  # the command chose its exit code
        return None
    return shutdown.requested()


def _verbose(ctx: Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("verbose"))
