"""`/images/*` (list, inspect, delete, tag, load, import) and `/distribution`; registered by app.py.

Everything goes to the host's ImageService (api/services.py). Load and import answer with
JSON lines as dockerd does (`{"stream": "Loaded image: ...\\n"}`, `{"status": "sha256:..."}`).
No registry is reachable, so `/distribution` and pulls answer a clear error instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from shoal.api.errors import InvalidArgument, NotFound
from shoal.apiserver.docker.context import ctx
from shoal.apiserver.http import JSON, add_route, empty_response, json_response, query_bool

_CHUNK = 64 * 1024


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        yield chunk


async def list_images(request: web.Request) -> web.Response:
    return json_response([s.to_wire() for s in ctx(request).images.list()])


async def inspect(request: web.Request) -> web.Response:
    return json_response(ctx(request).images.inspect(request.match_info["name"]))


async def delete(request: web.Request) -> web.Response:
    return json_response(ctx(request).images.remove(request.match_info["name"], query_bool(request, "force")))


async def tag(request: web.Request) -> web.Response:
    repo = request.query.get("repo", "")
    if not repo:
        raise InvalidArgument("repository name must have at least one component")
    ref = f"{repo}:{request.query.get('tag') or 'latest'}"
    ctx(request).images.tag(request.match_info["name"], ref)
    return empty_response(201)


async def _json_lines(request: web.Request, lines: list[dict[str, str]]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": JSON})
    await resp.prepare(request)
    for line in lines:
        await resp.write(msgspec.json.encode(line) + b"\n")
    await resp.write_eof()
    return resp


async def load(request: web.Request) -> web.StreamResponse:
    names = await ctx(request).images.load(_body(request))
    return await _json_lines(request, [{"stream": f"Loaded image: {n}\n"} for n in names])


async def create(request: web.Request) -> web.StreamResponse:
    """`docker import` (fromSrc=-); pulls (fromImage) cannot work without a registry."""
    q = request.query
    if q.get("fromImage"):
        raise NotFound(f"pull access denied for {q['fromImage']}: no registry is reachable from Shoal "
                       "(use docker load or docker import)")
    if q.get("fromSrc") != "-":
        raise InvalidArgument("only fromSrc=- (the image in the request body) is supported")
    repo = q.get("repo", "")
    ref = f"{repo}:{q.get('tag') or 'latest'}" if repo else ""
    image_id = await ctx(request).images.import_rootfs(_body(request), ref, q.getall("changes", []))
    return await _json_lines(request, [{"status": image_id}])


async def distribution(request: web.Request) -> web.Response:
    raise NotFound(f"no registry access: cannot resolve {request.match_info['name']} "
                   "(Shoal has no registry client yet)")


def register(app: web.Application) -> None:
    add_route(app, "GET", "/images/json", list_images)
    add_route(app, "POST", "/images/load", load)
    add_route(app, "POST", "/images/create", create)
    add_route(app, "GET", "/images/{name:.+}/json", inspect)
    add_route(app, "POST", "/images/{name:.+}/tag", tag)
    add_route(app, "DELETE", "/images/{name:.+}", delete)
    add_route(app, "GET", "/distribution/{name:.+}/json", distribution)
