"""The web layer of ``gpoa serve``: one static page and a small JSON API over a :class:`Workbench`.

Starlette (an ASGI toolkit) serves it under uvicorn. The API moves bytes and forwards messages; every
check of bad input is the workbench's. A GPOAError is a 400 (413 for an upload over the size limit)
with ``{"error": message}``; anything else is a 500 with the same shape, and the server goes on.

    GET  /                                 the page (static/index.html, app.js, app.css; nothing external)
    GET  /api/options                      the page's settings and limits
    POST /api/uploads                      body: one file; header X-File-Name: its name (URI-encoded)
    GET  /api/uploads/{id}/preview.png     the image as GPOA reads it, for the page to show and paint on
    POST /api/references                   {"images": [ids], "masks": [ids]} → {"reference": id}
    POST /api/predictions                  {"reference", "target", "truth" (or null), "policy", "presence"}
    GET  /api/results/{id}/overlay.png     the mask over the image (mask.png: the mask itself)
    POST /api/archives                     {"results": [ids]} → {"url": ...}, a zip of masks and prompt files
    GET  /api/archives/{id}.zip

The models run in one worker thread: predictions (and reference encodings) that arrive while one runs
wait in a queue in the order they came, however many there are; none is refused.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import unquote

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gpoa.errors import GPOAError, UsageError
from gpoa.serve.workbench import Settings, UploadTooLarge, Workbench

STATIC = Path(__file__).resolve().parent / "static"
#: the page's files: the only files a request for the page can reach
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "app.css": "text/css; charset=utf-8"}
#: the page may load from this server only (a browser refuses anything else, so nothing leaks offline either)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def create_app(workbench: Workbench) -> Starlette:
    """The ASGI application over ``workbench`` (whose models are loaded: :meth:`Workbench.warm_up`)."""
    page = {name: (STATIC / name).read_bytes() for name in PAGE_FILES}
    worker: dict = {}

    async def run(function, *args):
        """``function(*args)`` on the model worker, after every call queued before it."""
        return await anyio.to_thread.run_sync(function, *args, limiter=worker["limiter"])

    async def index(request: Request) -> Response:
        return Response(page["index.html"], media_type=PAGE_FILES["index.html"], headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in PAGE_FILES:
            return error(404, f"no page file {name[:40]!r}")
        return Response(page[name], media_type=PAGE_FILES[name], headers=SECURITY_HEADERS)

    async def options(request: Request) -> Response:
        return JSONResponse(workbench.options(), headers=SECURITY_HEADERS)

    async def upload(request: Request) -> Response:
        name = unquote(request.headers.get("x-file-name", "upload"))
        data, size = bytearray(), 0
        async for chunk in request.stream():  # read to the end (a browser reads no answer before that)
            size += len(chunk)
            if size <= workbench.max_upload_bytes:
                data += chunk
        workbench.check_upload_size(size, name)
        item = await anyio.to_thread.run_sync(workbench.upload, bytes(data), name)
        return JSONResponse({"id": item.id, "name": item.name, "width": item.size[0], "height": item.size[1]})

    async def preview(request: Request) -> Response:
        png = await anyio.to_thread.run_sync(workbench.preview, request.path_params["id"])
        return Response(png, media_type="image/png", headers=SECURITY_HEADERS)

    async def reference(request: Request) -> Response:
        body = await json_body(request)
        reference_id = await run(workbench.reference, list_of_ids(body, "images"), list_of_ids(body, "masks"))
        return JSONResponse({"reference": reference_id})

    async def predict(request: Request) -> Response:
        body = await json_body(request)
        settings = Settings(bool(body.get("policy", workbench.default_settings.policy)),
                            bool(body.get("presence", workbench.default_settings.presence)))
        result = await run(workbench.predict, str(body.get("reference")), str(body.get("target")),
                           None if body.get("truth") is None else str(body["truth"]), settings)
        summary = result.summary()
        summary.update(overlay=f"/api/results/{result.id}/overlay.png", mask=f"/api/results/{result.id}/mask.png")
        return JSONResponse(summary)

    async def result_file(request: Request) -> Response:
        path = workbench.result_file(request.path_params["id"], request.path_params["name"])
        return FileResponse(path, media_type="image/png", headers=SECURITY_HEADERS)

    async def archive(request: Request) -> Response:
        body = await json_body(request)
        path = await anyio.to_thread.run_sync(workbench.archive, list_of_ids(body, "results"))
        return JSONResponse({"url": f"/api/archives/{path.stem}.zip"})

    async def download(request: Request) -> Response:
        path = workbench.archive_file(request.path_params["id"])
        if path is None:
            return error(404, "no such zip on this server; press the download button again")
        return FileResponse(path, media_type="application/zip", filename="gpoa-results.zip",
                            headers=SECURITY_HEADERS)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker["limiter"] = anyio.CapacityLimiter(1)  # made inside the server's event loop
        yield

    routes = [Route("/", index), Route("/static/{name}", static), Route("/api/options", options),
              Route("/api/uploads", upload, methods=["POST"]), Route("/api/uploads/{id}/preview.png", preview),
              Route("/api/references", reference, methods=["POST"]),
              Route("/api/predictions", predict, methods=["POST"]),
              Route("/api/results/{id}/{name}", result_file), Route("/api/archives", archive, methods=["POST"]),
              Route("/api/archives/{id}.zip", download)]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={GPOAError: gpoa_error, Exception: internal_error})


async def json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise UsageError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object")
    return body


def list_of_ids(body: dict, key: str) -> list:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise UsageError(f"'{key}' must be a list of ids")
    return [str(item) for item in value]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


async def gpoa_error(request: Request, exc: Exception) -> Response:
    return error(413 if isinstance(exc, UploadTooLarge) else 400, str(exc))


async def internal_error(request: Request, exc: Exception) -> Response:
    """A failure no check foresaw (uvicorn prints its traceback): the page says so, the server goes on."""
    return error(500, f"the server failed on this request ({type(exc).__name__}: {exc}); it keeps running: the "
                      "other results stay, and the details are in the server's terminal")
