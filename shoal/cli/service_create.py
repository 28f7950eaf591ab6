"""`shoal service create`: flags → ServiceSpec (via `service_spec`) → POST /services/create.

Registered on the `service` group by `shoal.cli.service`. Every value flag is taken as a string
and validated by `service_spec`, so a bad value fails with docker's message and exit 1 before
any request. `--network` names are then resolved to IDs (`GET /networks/NAME?scope=swarm`, as
docker does). Unless -d, the convergence loop of `shoal.cli.progress` follows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from shoal.cli.client import App
from shoal.cli.endpoint import resolve_networks
from shoal.cli.network import network_resolver
from shoal.cli.progress import watch
from shoal.cli.service_spec import build_spec, convert, parse_duration

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def opt(*decls: str, help: str, multiple: bool = False, flag: bool = False) -> Decorator:
    if flag:
        return click.option(*decls, is_flag=True, default=None, help=help)
    return click.option(*decls, multiple=multiple, default=() if multiple else None, metavar="VALUE",
                        help=help)


def update_flags(prefix: str) -> list[Decorator]:
    """--update-* or --rollback-* (same shape, UpdateConfig / RollbackConfig)."""
    what = "an update" if prefix == "update" else "a rollback"
    return [
        opt(f"--{prefix}-parallelism", help=f"Maximum number of tasks changed simultaneously in {what}"),
        opt(f"--{prefix}-delay", help="Delay between task batches (ns|us|ms|s|m|h)"),
        opt(f"--{prefix}-monitor", help="Duration after each task to monitor for failure (default 5s)"),
        opt(f"--{prefix}-failure-action", help='Action on failure ("pause", "continue", "rollback")'),
        opt(f"--{prefix}-order", help='Order of operations ("start-first", "stop-first")'),
        opt(f"--{prefix}-max-failure-ratio", help="Failure rate to tolerate"),
    ]


def resource_flags() -> list[Decorator]:
    return [
        opt("--limit-cpu", help="Limit CPUs (e.g. 0.5)"),
        opt("--limit-memory", help="Limit memory (e.g. 64M)"),
        opt("--limit-pids", help="Limit maximum number of processes (0 = unlimited)"),
        opt("--reserve-cpu", help="Reserve CPUs"),
        opt("--reserve-memory", help="Reserve memory"),
        opt("--restart-condition", help='Restart when condition is met ("none", "on-failure", "any")'),
        opt("--restart-delay", help="Delay between restart attempts (default 5s)"),
        opt("--restart-max-attempts", help="Maximum number of restarts before giving up"),
        opt("--restart-window", help="Window used to evaluate the restart policy"),
    ]


def watch_flags() -> list[Decorator]:
    return [
        click.option("-d", "--detach", is_flag=True, help="Exit immediately, do not wait"),
        click.option("-q", "--quiet", is_flag=True, help="Suppress progress output"),
        opt("--timeout", help="Give up waiting for convergence after this long (default: never)"),
    ]


CREATE_FLAGS: list[Decorator] = [
    opt("--name", help="Service name"),
    opt("--replicas", help="Number of tasks"),
    opt("--mode", help='Service mode ("replicated" or "global")'),
    opt("-e", "--env", multiple=True, help="Set environment variables"),
    opt("-l", "--label", multiple=True, help="Service labels"),
    opt("--container-label", multiple=True, help="Container labels"),
    opt("--entrypoint", help="Overwrite the default ENTRYPOINT of the image"),
    opt("-w", "--workdir", help="Working directory inside the container"),
    opt("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])"),
    opt("--hostname", help="Container hostname"),
    opt("--constraint", multiple=True, help="Placement constraints"),
    opt("--placement-pref", multiple=True, help="Add a placement preference"),
    opt("--replicas-max-per-node", "--max-replicas", "max_replicas",
         help="Maximum number of tasks per node (default 0 = unlimited)"),
    opt("--stop-grace-period", help="Time to wait before force killing a container"),
    opt("--stop-signal", help="Signal to stop the container"),
    opt("--init", flag=True, help="Use an init inside each service container"),
    opt("--read-only", flag=True, help="Mount the container's root filesystem as read only"),
    opt("-p", "--publish", multiple=True,
        help="Publish a port: [PUBLISHED:]TARGET[/PROTO] or published=,target=,protocol=,mode="),
    opt("--network", multiple=True, help="Network attachments: NAME or name=NAME,alias=A,..."),
    opt("--endpoint-mode", help='Endpoint mode ("vip" or "dnsrr") (default "vip")'),
    *resource_flags(), *update_flags("update"), *update_flags("rollback"), *watch_flags(),
]


def with_flags(flags: list[Decorator]) -> Decorator:
    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for flag in reversed(flags):
            fn = flag(fn)
        return fn
    return apply


def timeout_ns(options: dict[str, Any]) -> int | None:
    value = options.get("timeout")
    return convert(value, "--timeout", parse_duration) if value is not None else None


def finish(app: App, service_id: str, options: dict[str, Any]) -> None:
    """After a change: the convergence loop unless -d."""
    if not options.get("detach"):
        watch(app.client, service_id, bool(options.get("quiet")), timeout_ns(options))


@click.command("create", context_settings={"allow_interspersed_args": False})
@with_flags(CREATE_FLAGS)
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def create(app: App, /, image: str, args: tuple[str, ...], **options: Any) -> None:
    """Create a new service: IMAGE [COMMAND] [ARG...]."""
    spec = build_spec(image, args, options)
    timeout_ns(options)  # validate before sending anything
    task = spec["TaskTemplate"]
    if task.get("Networks"):
        task["Networks"] = resolve_networks(task["Networks"], network_resolver(app))
    response = app.client.post("/services/create", body=spec)
    service_id = response["ID"]
    for warning in response.get("Warnings") or []:
        click.echo(warning, err=True)
    click.echo(service_id)
    finish(app, service_id, options)
