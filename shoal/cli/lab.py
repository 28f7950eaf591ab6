"""`shoal lab`: several Shoal hosts on this machine (network namespaces on a private switch).

    shoal lab up --nodes N [--name LAB] [--dispatcher-heartbeat 1s] [--images DIR]
    shoal lab ls
    shoal lab exec [--name LAB] HOST -- CMD...
    shoal lab stop [--name LAB] HOST [--kill]
    shoal lab start [--name LAB] HOST
    shoal lab link [--name LAB] HOST down|up
    shoal lab down [--name LAB | --all]

`up` refuses a lab that already exists (run `down` first); a failed `up` leaves the half-made lab
for inspection and `down` removes it. Every failure prints one message on stderr and exits 1.
The work is done by `shoal.lab`; this module only parses and prints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from shoal.api.units import parse_duration_ns
from shoal.cli.format import tabwrite
from shoal.hostnet.cmd import HostnetError
from shoal.lab import down as lab_down
from shoal.lab import names, ops
from shoal.lab import state as lab_state
from shoal.lab import up as lab_up

NAME_OPTION = click.option("--name", default=names.DEFAULT_NAME, show_default=True, help="Lab name")


class LabGroup(click.Group):
    """Prints a lab failure as one line on stderr and exits 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (names.LabError, HostnetError) as e:
            click.echo(str(e), err=True)
            raise SystemExit(1) from None


def default_images_dir() -> Path:
    """build/images of the working directory, else of the source tree shoal was installed from."""
    here = Path.cwd() / "build" / "images"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "build" / "images"


@click.group("lab", cls=LabGroup)
def lab() -> None:
    """Several Shoal hosts on this machine, for trying Shoal and for tests."""


@lab.command("up")
@click.option("--nodes", type=int, required=True, help="Number of hosts (node1..nodeN)")
@NAME_OPTION
@click.option("--dispatcher-heartbeat", metavar="DURATION", help="Swarm's Dispatcher.HeartbeatPeriod")
@click.option("--images", "images_dir", type=click.Path(path_type=Path),
              help="Directory of image archives (*.tar) every host loads [default: build/images]")
def up(nodes: int, name: str, dispatcher_heartbeat: str | None, images_dir: Path | None) -> None:
    """Create a lab: N hosts, node1 the manager, the others workers."""
    names.check_name(name)
    try:
        heartbeat = parse_duration_ns(dispatcher_heartbeat) if dispatcher_heartbeat else 0
    except ValueError as e:
        raise names.LabError(f"--dispatcher-heartbeat: {e}") from None
    directory = images_dir or default_images_dir()
    images = sorted(directory.glob("*.tar")) if directory.is_dir() else []
    if not images:
        click.echo(f"warning: no image archives in {directory}", err=True)
    try:
        lab_up.up(name, nodes, images, dispatcher_heartbeat_ns=heartbeat, report=click.echo)
    except (names.LabError, HostnetError) as e:
        if not lab_up.exists(name) or "already exists" in str(e):
            raise
        raise names.LabError(f"{e}\nThe half-made lab is left for inspection; remove it with: "
                             f"shoal lab down --name {name}") from None
    click.echo(f"lab {name} is up; try: shoal lab exec --name {name} node1 -- shoal node ls")


@lab.command("ls")
def ls() -> None:
    """List labs and the state of their hosts."""
    lines = ["NAME\tNODES\tSUBNET\tSTATE"]
    for st in lab_state.all_states():
        hosts = " ".join(f"{s.name}:{s.text}" for s in ops.status(st.name))
        lines.append(f"{st.name}\t{len(st.hosts)}\t{st.subnet}\t{hosts}")
    for other in sorted(set(lab_down.all_labs()) - {s.name for s in lab_state.all_states()}):
        lines.append(f"{other}\t?\t?\tbroken (remove with: shoal lab down --name {other})")
    for line in tabwrite(lines):
        click.echo(line.rstrip())


@lab.command("exec", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@NAME_OPTION
@click.argument("host")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, host: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in HOST's namespaces with DOCKER_HOST/SHOAL_HOST set to HOST's socket."""
    argv, env = ops.exec_argv(name, host, list(cmd[1:] if cmd and cmd[0] == "--" else cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        raise names.LabError(f"{argv[0]}: {e.strerror}") from None


@lab.command("stop")
@NAME_OPTION
@click.argument("host")
@click.option("--kill", is_flag=True, help="SIGKILL instead of SIGTERM")
def stop(name: str, host: str, kill: bool) -> None:
    """Stop a host: its shoald and all its containers die; its data stays."""
    ops.stop(name, host, kill=kill)
    click.echo(host)


@lab.command("start")
@NAME_OPTION
@click.argument("host")
def start(name: str, host: str) -> None:
    """Start a stopped host's shoald again (it resumes its swarm role)."""
    ops.start(name, host)
    click.echo(host)


@lab.command("link")
@NAME_OPTION
@click.argument("host")
@click.argument("state", type=click.Choice(["down", "up"]))
def link(name: str, host: str, state: str) -> None:
    """Cut (down) or heal (up) HOST's link to the lab switch."""
    ops.link(name, host, state == "up")
    click.echo(host)


@lab.command("down")
@click.option("--name", help=f"Lab name [default: {names.DEFAULT_NAME}]")
@click.option("--all", "all_", is_flag=True, help="Remove every lab")
def down(name: str | None, all_: bool) -> None:
    """Remove a lab entirely (also a half-made one, or one left by a crash)."""
    if name and all_:
        raise names.LabError("use either --name or --all")
    targets = lab_down.all_labs() if all_ else [names.check_name(name or names.DEFAULT_NAME)]
    for target in targets:
        with lab_state.locked():
            found = lab_down.down(target)
        if found:
            click.echo(target)
        elif not all_:
            raise names.LabError(f"no lab named {target!r}")


if __name__ == "__main__":
    lab()
