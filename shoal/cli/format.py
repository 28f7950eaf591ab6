"""Output formatting shared by the command modules: docker's tables, `--format`, units, times.

`print_rows` renders list output (service ls, service ps, image ls) the way docker's formatter
does: a default `table` layout, `--format table ...`, `--format json`, or a Go template per row,
with table output aligned by `tabwrite` (Go's tabwriter with docker's settings: minimum width 10,
padding 3). `human_duration` is docker's units.HumanDuration; `human_size` its HumanSize.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

from shoal.cli.client import CliError
from shoal.cli.template import Template, TemplateError

Row = Mapping[str, Any]


def human_duration(seconds: float) -> str:
    """docker/go-units HumanDuration, for a duration in seconds."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def human_size(size: float) -> str:
    """go-units HumanSizeWithPrecision(size, 3): decimal units, e.g. `4.26MB`."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    i = 0
    while size >= 1000.0 and i < len(units) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.3g}{units[i]}"


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp with up to nanoseconds (Python keeps microseconds)."""
    if not text:
        return None
    head, _, frac_zone = text.partition(".")
    if frac_zone:
        digits = "".join(ch for ch in frac_zone if ch.isdigit())
        zone = frac_zone[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def ago(timestamp: str | None, now: dt.datetime | None = None) -> str:
    """`2 minutes` (human duration since the timestamp); empty for a missing time."""
    when = parse_time(timestamp)
    if when is None:
        return ""
    now = now or dt.datetime.now(dt.UTC)
    return human_duration((now - when).total_seconds())


def truncate_id(value: str, length: int = 12) -> str:
    return value[:length]


def ellipsis(text: str, width: int) -> str:
    """docker's formatter.Ellipsis: cut to `width` runes, the last one being `…`."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"


def pretty_state(state: str) -> str:
    """docker's command.PrettyPrint: capitalise the first letter."""
    return state[:1].upper() + state[1:]


def strip_digest(image: str) -> str:
    return image.split("@", 1)[0]


def tabwrite(lines: Sequence[str], minwidth: int = 10, padding: int = 3) -> list[str]:
    """Go's tabwriter (no flags): every tab-terminated cell padded to its column's width."""
    rows = [line.split("\t") for line in lines]
    widths: dict[int, int] = {}
    for cells in rows:
        for i, cell in enumerate(cells[:-1]):
            widths[i] = max(widths.get(i, minwidth), len(cell) + padding)
    return ["".join(c.ljust(widths[i]) for i, c in enumerate(cells[:-1])) + cells[-1] for cells in rows]


def _unescape(text: str) -> str:
    return text.replace("\\t", "\t").replace("\\n", "\n")


def render_rows(rows: Sequence[Row], headers: Mapping[str, str], default_table: str,
                fmt: str | None, quiet_field: str | None = None) -> list[str]:
    """The lines of list output. `headers` maps a field to its column title."""
    if quiet_field is not None:
        return [str(row[quiet_field]) for row in rows]
    fmt = fmt or "table"
    if fmt == "json":
        fmt = "{{json .}}"
    table = fmt == "table" or fmt.startswith("table ")
    body = default_table if fmt == "table" else _unescape(fmt[len("table "):] if table else fmt).strip()
    try:
        template = Template(body)
        out = [template.render(row) for row in rows]
        if table:
            out.insert(0, template.render(headers))
    except TemplateError as exc:
        raise CliError(f"template parsing error: {exc}") from None
    return tabwrite("\n".join(out).split("\n")) if table else out


def print_rows(rows: Sequence[Row], headers: Mapping[str, str], default_table: str,
               fmt: str | None, quiet_field: str | None = None) -> None:
    for line in render_rows(rows, headers, default_table, fmt, quiet_field):
        click.echo(line)


def indent_json(values: Sequence[Any]) -> str:
    """docker inspect's output: a JSON array indented by four spaces."""
    return json.dumps(list(values), indent=4, ensure_ascii=False)


def print_inspect(values: Sequence[Any], fmt: str | None) -> None:
    """Raw JSON, or each object through `--format`."""
    if not fmt:
        click.echo(indent_json(values))
        return
    if fmt == "json":
        fmt = "{{json .}}"
    try:
        template = Template(_unescape(fmt))
        for value in values:
            click.echo(template.render(value))
    except TemplateError as exc:
        raise CliError(f"template parsing error: {exc}") from None
