"""The HTTP side: a Starlette app over a :class:`~dlbhc_caffe.serve.engine.Searcher`.

Routes (every error is JSON ``{"error": message}`` with a 4xx status; the service carries on):

    GET  /                      the page (static/index.html)
    GET  /static/...            its script and style
    GET  /api/info              the index's facts: images, bits, model, classes...
    GET  /api/search?id=ID&k=K[&fine=1&radius=R]    search from a database item
    GET  /api/search?code=BITS|HEX&k=K              search from a code
    POST /api/search            multipart: ``image`` (a file) + optional k, fine, radius;
                                or JSON: {"id": ID | "code": CODE, "k", "fine", "radius"}
    GET  /api/image/ID          the item's thumbnail (PNG), from the index's own path for it

Searches run in the server's thread pool, so a slow encode does not stall other requests.
"""
import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .params import ServeError, check_fields

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD = 10 * 1024 * 1024   # bytes of one request body (an image upload)
DRAIN_LIMIT = 64 * 1024 * 1024  # an oversized body is read (and dropped) up to this, so the
# client, still sending, gets the 413 answer instead of a reset connection


class LimitBody:
    """ASGI middleware: request bodies over ``limit`` bytes are refused with 413, checked on the
    declared Content-Length and again while reading (chunked uploads declare none)."""

    def __init__(self, app, limit=MAX_UPLOAD):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= DRAIN_LIMIT:
                await _drain(receive, DRAIN_LIMIT)
            return await _error(413, self._message(int(declared)))(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                if message.get("more_body"):
                    await _drain(receive, DRAIN_LIMIT - seen)
                raise HTTPException(413, self._message(seen, more=True))
            return message

        return await self.app(scope, limited, send)

    def _message(self, size, more=False):
        return (f"the upload is {'more than ' if more else ''}{size:,} bytes; the service takes "
                f"at most {self.limit:,} (a larger image should be resized first)")


async def _drain(receive, budget):
    while budget > 0:
        message = await receive()
        budget -= len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def _error(status, message):
    return JSONResponse({"error": message}, status_code=status)


async def _serve_error(request, err):
    return _error(err.status, str(err))


async def _http_error(request, err):
    messages = {404: f"no such page: {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}
    return _error(err.status_code, err.detail if err.status_code not in messages
                  else messages[err.status_code])


async def _crash(request, err):
    # a bug, not bad input: say so in JSON (the traceback goes to the server's log)
    return _error(500, f"internal error ({type(err).__name__}); the service goes on")


def _single(values):
    """Query or form values as a dict, each field given once."""
    out = {}
    for key, value in values.multi_items():
        if key in out:
            raise ServeError(f"{key}: given more than once")
        out[key] = value
    return out


def create_app(searcher, max_upload=MAX_UPLOAD):
    """The ASGI app serving ``searcher`` (a :class:`~dlbhc_caffe.serve.engine.Searcher`)."""

    async def page(request):
        return FileResponse(STATIC / "index.html")

    async def info(request):
        return JSONResponse(searcher.info())

    async def search(request):
        if request.method == "GET":
            return await _search_values(_single(request.query_params))
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            return await _search_form(request)
        if kind == "application/json":
            try:
                values = json.loads(await request.body())
            except ValueError as err:
                raise ServeError(f"the JSON body is malformed ({err})") from None
            if not isinstance(values, dict):
                raise ServeError("the JSON body must be an object: {\"id\": ..., \"k\": ...}")
            return await _search_values(values)
        raise ServeError(f"POST /api/search takes multipart/form-data (an image) or "
                         f"application/json, not {kind or 'a body without a content type'}",
                         status=415)

    async def _search_values(values):
        check_fields(values)
        if "image" in values:
            raise ServeError("image: upload it as a multipart/form-data file field")
        if ("id" in values) == ("code" in values):
            raise ServeError("give one of id (a database item) or code (bits or hex), or POST "
                             "an image")
        call = searcher.search_id if "id" in values else searcher.search_code
        return JSONResponse(await run_in_threadpool(call, values))

    async def _search_form(request):
        try:
            async with request.form(max_files=1, max_fields=8) as form:
                values = _single(form)
                check_fields(values)
                upload = values.pop("image", None)
                if upload is None or isinstance(upload, str):
                    raise ServeError("image: no file in the multipart field 'image'")
                data = await upload.read()
                name = upload.filename
        except ClientDisconnect:
            return Response(status_code=400)
        return JSONResponse(await run_in_threadpool(searcher.search_image, data, values, name))

    async def image(request):
        data = await run_in_threadpool(searcher.thumbnail, request.path_params["item"])
        return Response(data, media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    routes = [Route("/", page), Route("/api/info", info),
              Route("/api/search", search, methods=["GET", "POST"]),
              Route("/api/image/{item}", image),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, exception_handlers={
        ServeError: _serve_error, HTTPException: _http_error, Exception: _crash})
    app.state.searcher = searcher
    return LimitBody(app, max_upload)
