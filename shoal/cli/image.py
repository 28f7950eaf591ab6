"""`shoal image ls|import|load|rm|tag`: the daemon's local images.

`shoal.cli.main` adds this group to the root. `import` of a directory tars it here and streams the
tar; `import` and `load` print the daemon's JSON progress stream (`status` / `stream` fields).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import click

from shoal.cli.client import App, CliError, DaemonError
from shoal.cli.format import human_duration, human_size, print_rows

LS_HEADERS = {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "CreatedSince": "CREATED",
              "Size": "SIZE"}
LS_TABLE = "{{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
CHUNK = 1 << 20


@click.group("image")
def image() -> None:
    """Manage images."""


def image_rows(images: list[dict[str, Any]], now: dt.datetime | None = None) -> list[dict[str, str]]:
    """One row per repository tag (`<none>` for untagged), newest first."""
    now = now or dt.datetime.now(dt.UTC)
    rows = []
    for img in sorted(images, key=lambda i: int(i.get("Created", 0)), reverse=True):
        created = dt.datetime.fromtimestamp(int(img.get("Created", 0)), dt.UTC)
        base = {"ID": str(img.get("Id", "")).removeprefix("sha256:")[:12],
                "CreatedSince": human_duration((now - created).total_seconds()) + " ago",
                "Size": human_size(float(img.get("Size", 0)))}
        for ref in img.get("RepoTags") or ["<none>:<none>"]:
            repo, _, tag = ref.rpartition(":")
            rows.append({"Repository": repo, "Tag": tag, **base})
    return rows


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs")
@click.option("--format", "fmt", help="Format output using a custom template")
@click.pass_obj
def ls(app: App, quiet: bool, fmt: str | None) -> None:
    """List images."""
    rows = image_rows(app.client.get("/images/json") or [])
    print_rows(rows, LS_HEADERS, LS_TABLE, fmt, quiet_field="ID" if quiet else None)


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _print_progress(lines: Iterator[str]) -> None:
    """The JSON message stream of /images/create and /images/load."""
    for line in lines:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:
            click.echo(line)
            continue
        if message.get("error") or message.get("errorDetail"):
            detail = message.get("errorDetail") or {}
            raise CliError(message.get("error") or detail.get("message", "error"))
        text = message.get("stream") or message.get("status")
        if text:
            click.echo(str(text).rstrip("\n"))


def _tar_directory(path: str) -> IO[bytes]:
    """A directory as an uncompressed tar in a temporary file (names relative to the directory)."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (returned open to the caller)
    with tarfile.open(fileobj=spool, mode="w") as tar:
        for entry in sorted(os.listdir(path)):
            tar.add(os.path.join(path, entry), arcname=entry)
    spool.seek(0)
    return spool


@image.command("import")
@click.argument("source")
@click.argument("reference", required=False)
@click.pass_obj
def import_(app: App, source: str, reference: str | None) -> None:
    """Import a root filesystem (tarball or directory) as an image: SOURCE [REPOSITORY[:TAG]]."""
    if not os.path.exists(source):
        raise CliError(f"open {source}: no such file or directory")
    params: dict[str, str | int] = {"fromSrc": "-"}
    if reference:
        repo, sep, tag = reference.rpartition(":")
        if not sep or "/" in tag:
            repo, tag = reference, "latest"
        params.update(repo=repo, tag=tag)
    handle = _tar_directory(source) if os.path.isdir(source) else open(source, "rb")  # noqa: SIM115
    with handle, app.client.stream("POST", "/images/create", params, content=_chunks(handle),
                                   headers={"Content-Type": "application/x-tar"}) as response:
        _print_progress(response.iter_lines())


@image.command("load")
@click.option("-i", "--input", "input_path", help="Read from tar archive file, instead of STDIN")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output")
@click.pass_obj
def load(app: App, input_path: str | None, quiet: bool) -> None:
    """Load an image from a tar archive or STDIN."""
    if input_path is None and sys.stdin.isatty():
        raise CliError("requested load from stdin, but stdin is empty")
    if input_path is not None and not os.path.exists(input_path):
        raise CliError(f"open {input_path}: no such file or directory")
    handle = open(input_path, "rb") if input_path else sys.stdin.buffer  # noqa: SIM115
    with handle, app.client.stream("POST", "/images/load", {"quiet": int(quiet)}, content=_chunks(handle),
                                   headers={"Content-Type": "application/x-tar"}) as response:
        _print_progress(response.iter_lines())


@image.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force removal of the image")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(app: App, force: bool, names: tuple[str, ...]) -> None:
    """Remove one or more images."""
    errors: list[str] = []
    for name in names:
        try:
            result = app.client.delete(f"/images/{name}", {"force": int(force)}) or []
        except DaemonError as exc:
            errors.append(exc.message)
            continue
        for item in result:
            for key in ("Untagged", "Deleted"):
                if item.get(key):
                    click.echo(f"{key}: {item[key]}")
    if errors:
        raise CliError("\n".join(errors))


@image.command("tag")
@click.argument("source")
@click.argument("target")
@click.pass_obj
def tag(app: App, source: str, target: str) -> None:
    """Create a tag TARGET that refers to SOURCE."""
    repo, sep, tag_name = target.rpartition(":")
    if not sep or "/" in tag_name:
        repo, tag_name = target, "latest"
    app.client.post(f"/images/{source}/tag", {"repo": repo, "tag": tag_name})
