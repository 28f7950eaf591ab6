"""A small subset of Go's text/template, for docker-style `--format` strings.

Used by `shoal.cli.format` (tables, `--format json`, custom templates) and by `inspect`,
`version` and `info`. Supported: literal text; `{{.}}`, `{{.Field}}`, `{{.A.B}}`; functions
`json`, `index`, `upper`, `lower`, `title`, `join`, `truncate`, `println`; pipes
(`{{.Name | upper}}`); string and integer literals. `{{if}}`/`{{range}}` are not supported and
raise `TemplateError`. Values print as Go's `%v` would (maps as `map[k:v]`, nil as `<nil>`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.DOTALL)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\||\(|\)|[^\s|()]+)')
MISSING = object()


class TemplateError(ValueError):
    """A template that does not parse or does not execute."""


def go_json(value: Any) -> str:
    """Go's json.Marshal: compact, with <, > and & escaped as Go escapes them."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def go_print(value: Any) -> str:
    """Go's fmt %v for JSON-shaped values."""
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, dict):
        inner = " ".join(f"{k}:{go_print(value[k])}" for k in sorted(value))
        return f"map[{inner}]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    return str(value)


def _field(value: Any, path: str) -> Any:
    """Walk `.A.B` through dicts (and objects' attributes)."""
    for name in (p for p in path.split(".") if p):
        if isinstance(value, dict):
            value = value.get(name, MISSING)
        elif value is None or value is MISSING:
            raise TemplateError(f"nil pointer evaluating .{name}")
        else:
            value = getattr(value, name, MISSING)
            if value is MISSING:
                raise TemplateError(f"can't evaluate field {name}")
    return value


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, "")
        elif isinstance(value, list) and isinstance(key, int):
            if not 0 <= key < len(value):
                raise TemplateError(f"index out of range: {key}")
            value = value[key]
        else:
            raise TemplateError(f"can't index item of type {type(value).__name__}")
    return value


def _truncate(value: Any, length: Any) -> str:
    text = go_print(value)
    return text[: int(length)]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": lambda v: go_json(None if v is MISSING else v),
    "index": _index,
    "upper": lambda v: go_print(v).upper(),
    "lower": lambda v: go_print(v).lower(),
    "title": lambda v: go_print(v).title(),
    "join": lambda v, sep: sep.join(go_print(x) for x in (v or [])),
    "truncate": _truncate,
    "println": lambda *v: " ".join(go_print(x) for x in v) + "\n",
}


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def _literal(token: str, data: Any) -> Any:
    if token.startswith('"'):
        return json.loads(token)
    if token.startswith("`"):
        return token[1:-1]
    if token.startswith("."):
        return data if token == "." else _field(data, token)
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token in ("true", "false"):
        return token == "true"
    raise TemplateError(f'function "{token}" not defined')


def _command(tokens: list[str], data: Any, piped: Any) -> Any:
    head = tokens[0]
    if head in FUNCTIONS:
        args = [_literal(t, data) for t in tokens[1:]]
        if piped is not MISSING:
            args.append(piped)
        try:
            return FUNCTIONS[head](*args)
        except TypeError as exc:
            raise TemplateError(f"wrong number of args for {head}: {exc}") from None
    if len(tokens) > 1 or piped is not MISSING:
        raise TemplateError(f"can't give argument to non-function {head}")
    return _literal(head, data)


def _evaluate(action: str, data: Any) -> Any:
    tokens = _tokens(action)
    if not tokens:
        raise TemplateError("missing value for command")
    if tokens[0] in ("if", "range", "with", "else", "end", "define", "template", "block"):
        raise TemplateError(f'"{tokens[0]}" is not supported by shoal\'s template subset')
    result: Any = MISSING
    command: list[str] = []
    for token in [*tokens, "|"]:
        if token != "|":
            command.append(token)
            continue
        if not command:
            raise TemplateError("missing command in pipeline")
        result = _command(command, data, result)
        command = []
    return result


class Template:
    """A parsed template; `render(data)` executes it."""

    def __init__(self, text: str) -> None:
        self.parts: list[tuple[bool, str]] = []
        pos = 0
        for m in _ACTION.finditer(text):
            self.parts.append((False, text[pos:m.start()]))
            self.parts.append((True, m.group(1)))
            pos = m.end()
        rest = text[pos:]
        if "{{" in rest:
            raise TemplateError("unclosed action")
        self.parts.append((False, rest))

    def render(self, data: Any) -> str:
        out: list[str] = []
        for is_action, text in self.parts:
            if not is_action:
                out.append(text)
                continue
            value = _evaluate(text, data)
            out.append(value if isinstance(value, str) else go_print(value))
        return "".join(out)


def render(text: str, data: Any) -> str:
    return Template(text).render(data)
