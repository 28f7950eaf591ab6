"""The `shoal` command (entry point `shoal.cli.main:main`): the root click group.

It assembles the noun groups (service, swarm, node, network, image) and system commands, and turns
every failure into docker's behaviour: the message on stderr and exit status 1 (click's own usage errors,
exit 2 by default, exit 1 here too, with docker's `See '... --help'.` hint). `lab` (shoal.cli.lab)
is loaded on first use, so the rest of the CLI works even where that module cannot be imported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from shoal.cli.client import App, CliError
from shoal.cli.image import image
from shoal.cli.network import network
from shoal.cli.node import node
from shoal.cli.service import service
from shoal.cli.swarm import swarm
from shoal.cli.system import daemon, info, version

# Commands imported when first asked for: name -> (module, attribute).
LAZY_COMMANDS = {"lab": ("shoal.cli.lab", "lab")}


class ShoalGroup(click.Group):
    """A root group whose failures print docker-style and exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in LAZY_COMMANDS:
            return command
        module_name, attribute = LAZY_COMMANDS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return None
        loaded = getattr(module, attribute, None)
        return loaded if isinstance(loaded, click.Command) else None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            return super().main(args, prog_name or "shoal", complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx else "shoal"
            click.echo(f"{exc.format_message()}\nSee '{path} --help'.", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(1)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except CliError as exc:
            if exc.message:  # empty when the command already printed its errors (network rm)
                click.echo(exc.message, err=True)
            sys.exit(exc.exit_code)


@click.group("shoal", cls=ShoalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-H", "--host", envvar=None, help="Daemon socket to connect to (default: $SHOAL_HOST, "
              "$DOCKER_HOST, unix:///run/shoal/shoal.sock)")
@click.pass_context
def cli(ctx: click.Context, host: str | None) -> None:
    """A container orchestrator that speaks Docker Swarm's API."""
    if ctx.obj is None:
        ctx.obj = App(host=host)
    elif host is not None:
        ctx.obj.host = host


for command in (service, swarm, node, network, image, version, info, daemon):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    code = cli.main(sys.argv[1:])
    sys.exit(code if isinstance(code, int) else 0)
