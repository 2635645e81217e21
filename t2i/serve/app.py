"""The ASGI app: OpenAI's images API over the systems, the job queue, the page, and the guards in front.

Endpoints (the official `openai` client works with `base_url="http://HOST:PORT/v1"`):
- POST /v1/images/generations  JSON: model (a system name), prompt, n, size "WxH", response_format
  b64_json | url, stream; t2i's extras (`extra_body=` in the client): seed, steps, guidance,
  negative_prompt, sampler.
- POST /v1/images/edits        multipart: image, mask (see t2i.serve.params for the two mask conventions),
  prompt, the fields above, strength, mask_convention. A mask -> inpainting; none -> img2img.
- POST /v1/images/variations   multipart: image, n, size, seed, steps: systems that support `vary`
  (their `vary(image, num_images=, seed=, steps=, width=, height=)`); the others answer 422.
- GET /v1/models, GET /v1/models/{id}, GET /healthz, GET / (the page), GET /v1/images/files/{id}.png
  (response_format=url: the last images, kept in memory under unguessable names).
- `"stream": true` answers server-sent events: t2i.queued / t2i.started / t2i.progress (step, total) per
  sampler step, then OpenAI's image_generation.completed (image_edit.completed) per image, or an error.

Errors: {"error": {"message", "type", "param", "code"}} with 400 (bad value), 401 (API key), 404 (no such
model or route), 405, 413 (body or upload too large), 422 (the model cannot do that operation), 429 (the
model's queue is full), 500, 503 (the model failed to load, or the server is stopping)."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hmac
import json
import secrets
import sys
import time
import traceback
from importlib import resources
from typing import Any, Callable

from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from t2i.io.images import png_bytes
from t2i.serve import params
from t2i.serve.jobs import Job, JobCancelled, JobQueue, QueueFull
from t2i.serve.params import ApiError, Limits
from t2i.systems import GenerationRequest, SystemBase

OPEN_PATHS = ("/", "/healthz", "/favicon.ico")  # answered without the API key; so is /v1/images/files/<secret>


class BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware in front of everything: the body-size limit (Content-Length, then counted as it
    arrives), and the API key (Authorization: Bearer K, compared in constant time)."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.key, self.max_body = app, api_key.encode() if api_key else None, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if self.key is not None and path not in OPEN_PATHS and not path.startswith("/v1/images/files/"):
            given = headers.get("authorization", "")
            token = given[7:].strip() if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode("utf-8", "replace"), self.key):
                err = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' (the server's "
                                    "--api-key)", code="invalid_api_key")
                return await _send_error(err, scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _send_error(ApiError(413, f"the request body is {length} bytes; the limit is "
                                                   f"{self.max_body}", code="request_too_large"), scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge()
            return message

        return await self.app(scope, counted, send)


async def _send_error(err: ApiError, scope, receive, send):
    await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)


class Service:
    """The systems by name, the queue, the limits and the recent images of response_format=url."""

    def __init__(self, systems: dict[str, Any], unavailable: dict[str, str] | None = None,
                 limits: Limits = Limits(), max_waiting: int = 8, api_key: str | None = None, keep_urls: int = 256):
        self.systems, self.unavailable = systems, dict(unavailable or {})
        self.limits, self.api_key = limits, api_key
        self.queue = JobQueue(list(systems), max_waiting)
        self.files: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.keep_urls = keep_urls
        self.started = time.time()

    def system(self, name: Any) -> Any:
        if name is None:
            if len(self.systems) == 1:
                return next(iter(self.systems))
            raise ApiError(400, f"missing required parameter 'model': one of {', '.join(self.names())}",
                           param="model", code="missing_parameter")
        if not isinstance(name, str):
            raise ApiError(400, f"model must be text, got {type(name).__name__}", param="model", code="invalid_value")
        if name in self.unavailable:
            raise ApiError(503, f"the model {name!r} is unavailable: {self.unavailable[name]}", param="model",
                           code="model_unavailable")
        if name not in self.systems:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {', '.join(self.names())}",
                           param="model", code="model_not_found")
        return name

    def names(self) -> list[str]:
        return sorted(self.systems) + sorted(self.unavailable)

    def keep(self, data: bytes) -> str:
        key = secrets.token_urlsafe(18)
        self.files[key] = data
        while len(self.files) > self.keep_urls:
            self.files.popitem(last=False)
        return key


def run_system(system: Any, request: GenerationRequest, progress: Callable[[int], None]) -> list[Image.Image]:
    """`system.generate(request)` with a per-step progress callback (SystemBase.images takes one). A system
    of another kind runs through generate."""
    if not isinstance(system, SystemBase):
        return system.generate(request)
    return list(system.images(request, progress))


def _total_steps(system: Any, request: GenerationRequest) -> int:
    try:
        return int(system.total_steps(request))
    except Exception:  # noqa: BLE001  (a system without the method: progress has no total)
        return request.steps or 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON: send a JSON object (Content-Type: application/json)",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


async def _form_body(request: Request, limits: Limits) -> tuple[dict, dict[str, bytes]]:
    """A multipart form -> (text fields, uploaded files' bytes). Files are read from memory, never a path."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "this endpoint takes multipart/form-data (an image file, and fields)",
                       code="invalid_content_type")
    try:
        form = await request.form(max_files=4, max_fields=64, max_part_size=limits.max_image_bytes + 1)
    except BodyTooLarge:
        raise
    except Exception as e:  # noqa: BLE001  (python-multipart's errors: a malformed body)
        if "exceed" in str(e).lower() or "too large" in str(e).lower():
            raise ApiError(413, f"an uploaded part is too large: {_first_line(e)}", code="request_too_large") from None
        raise ApiError(400, f"cannot read the multipart form: {_first_line(e)}", code="invalid_form") from None
    fields, files = {}, {}
    for key, value in form.multi_items():
        key = key.removesuffix("[]")
        if isinstance(value, str):
            fields[key] = value
        elif key not in files:  # the first of several images: t2i edits one image at a time
            files[key] = await value.read()
    await form.close()
    return fields, files


def _request(prompt: Any, **options: Any) -> GenerationRequest:
    try:
        return GenerationRequest(prompts=prompt, **options)
    except ValueError as e:
        raise ApiError(400, _first_line(e), code="invalid_value") from None


def create_app(service: Service) -> Guard:
    """The service's ASGI app: Starlette's routes behind the Guard (API key, body size)."""
    limits = service.limits

    async def page(request: Request) -> Response:
        html = resources.files("t2i.serve").joinpath("page/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(service.systems), "unavailable": service.unavailable,
                             "queue": service.queue.stats(), "auth": service.api_key is not None,
                             "uptime_s": round(time.time() - service.started, 1)})

    def model_card(name: str) -> dict:
        if name in service.unavailable:
            return {"id": name, "object": "model", "created": int(service.started), "owned_by": "t2i",
                    "ready": False, "error": service.unavailable[name], "capabilities": []}
        system = service.systems[name]
        caps = [c for c in ("txt2img", "img2img", "inpaint", "vary", "control", "caption") if system.supports(c)]
        return {"id": name, "object": "model", "created": int(service.started), "owned_by": "t2i", "ready": True,
                "capabilities": caps, "system": type(system).__name__}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card(n) for n in service.names()]})

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        if name not in service.systems and name not in service.unavailable:
            raise ApiError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
        return JSONResponse(model_card(name))

    async def image_file(request: Request) -> Response:
        data = service.files.get(request.path_params["key"])
        if data is None:
            raise ApiError(404, "no such image (images behind URLs are kept for the last "
                                f"{service.keep_urls} only)", code="not_found")
        return Response(data, media_type="image/png")

    async def generations(request: Request) -> Response:
        body = await _json_body(request)
        params.check_fields(body, params.OPENAI_FIELDS | params.T2I_FIELDS - {"strength", "mask_convention"})
        name = service.system(body.get("model"))
        fmt, streaming = params.response_format(body), params.stream(body)
        prompt = params._text(body, "prompt", required=True)
        req = _request(prompt, **params.options(body, limits))
        return await submit(request, name, req, fmt, streaming, "image_generation")

    async def edits(request: Request) -> Response:
        fields, files = await _form_body(request, limits)
        params.check_fields({**fields, **files}, params.OPENAI_FIELDS | params.T2I_FIELDS | {"image", "mask"})
        name = service.system(fields.get("model"))
        fmt, streaming = params.response_format(fields), params.stream(fields)
        prompt = params._text(fields, "prompt", required=True)
        opts = params.options(fields, limits)
        init = params.image(files.get("image", fields.get("image")), "image", limits)
        mask = params.image(files["mask"], "mask", limits) if "mask" in files or "mask" in fields else None
        init, mask = params.edit_inputs(init, mask, fields.get("mask_convention", "auto"),
                                        (opts["width"], opts["height"]))
        strength = params._number(fields, "strength", float, 1.0 if mask is not None else 0.75)
        opts.update(width=init.size[0], height=init.size[1])
        req = _request(prompt, image=init, mask=mask, strength=strength, **opts)
        return await submit(request, name, req, fmt, streaming, "image_edit")

    async def variations(request: Request) -> Response:
        fields, files = await _form_body(request, limits)
        params.check_fields({**fields, **files}, {"model", "n", "size", "response_format", "image", "seed",
                                                  "steps", "stream"})
        name = service.system(fields.get("model"))
        system = service.systems[name]
        if not system.supports("vary"):
            raise ApiError(422, f"the model {name!r} cannot make variations of an image (it supports "
                                f"{', '.join(model_card(name)['capabilities'])}); choose a model whose "
                                "capabilities in GET /v1/models include 'vary'", param="model",
                           code="unsupported_operation")
        fmt, streaming = params.response_format(fields), params.stream(fields)
        opts = params.options(fields, limits)
        init = params.image(files.get("image", fields.get("image")), "image", limits).convert("RGB")
        kw = {k: opts[k] for k in ("num_images", "seed", "steps", "width", "height") if opts[k] is not None}

        def work(progress):
            return system.vary(init, **kw)

        return await submit(request, name, None, fmt, streaming, "image_variation", work=work,
                            total=opts["steps"] or 0)

    async def submit(request: Request, name: str, req: GenerationRequest | None, fmt: str, streaming: bool,
                     kind: str, work: Callable | None = None, total: int | None = None) -> Response:
        system = service.systems[name]
        if req is not None:
            if not system.supports(req.capability):
                raise ApiError(422, f"the model {name!r} does not support {req.capability} (it supports "
                                    f"{', '.join(model_card(name)['capabilities'])})", param="model",
                               code="unsupported_operation")
            total = _total_steps(system, req)

            def work(progress):
                return run_system(system, req, progress)

        def encode(progress):  # on the worker thread: the event loop never encodes PNGs
            return [(png_bytes(im, im.info), im.size) for im in work(progress)]

        job = Job(name, encode, total or 0, asyncio.get_running_loop())
        try:
            service.queue.submit(job)
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full") from None
        if streaming:
            return StreamingResponse(stream_events(request, job, fmt, kind), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        try:
            images = await wait(request, job)
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse({"created": int(time.time()), "data": [image_item(request, d, fmt) for d, _ in images],
                             "output_format": "png", "size": "%dx%d" % images[0][1] if images else None,
                             "t2i": {"job": job.id, "queued_s": round(job.started - job.created, 3),
                                     "run_s": round(job.finished - job.started, 3)}})

    def image_item(request: Request, data: bytes, fmt: str) -> dict:
        if fmt == "url":
            return {"url": str(request.url_for("image_file", key=service.keep(data))), "revised_prompt": None}
        return {"b64_json": base64.b64encode(data).decode("ascii"), "revised_prompt": None}

    async def wait(request: Request, job: Job) -> list:
        """The job's images; cancels the job when the client goes away while it waits."""
        while True:
            done, _ = await asyncio.wait({job.result}, timeout=0.25)
            if done:
                return job_outcome(job)
            if await request.is_disconnected():
                job.cancel()
                raise ClientGone()

    def job_outcome(job: Job) -> list:
        try:
            return job.result.result()
        except JobCancelled:
            raise ApiError(503, "the job was cancelled: the server is stopping", code="cancelled") from None
        except ValueError as e:
            raise ApiError(400, _first_line(e), code="invalid_value") from None
        except Exception as e:  # noqa: BLE001
            traceback.print_exception(e, file=sys.stderr)
            raise ApiError(500, f"generation failed: {type(e).__name__}: {_first_line(e)}",
                           code="generation_failed") from None

    async def stream_events(request: Request, job: Job, fmt: str, kind: str):
        """Server-sent events: progress while the job waits and runs, then each image, or an error. Starlette
        cancels this generator when the client disconnects; the job is cancelled with it."""

        def sse(event: str, data: dict) -> bytes:
            return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()

        try:
            while not job.result.done() or not job.events.empty():
                getter = asyncio.ensure_future(job.events.get())
                done, _ = await asyncio.wait({getter, job.result}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    event = getter.result()
                    yield sse(event["type"], event)
                else:
                    getter.cancel()
            try:
                images = job_outcome(job)
            except ApiError as e:
                yield sse("error", e.body())
                return
            for i, (data, wh) in enumerate(images):
                item = image_item(request, data, fmt)
                yield sse(f"{kind}.completed", {"type": f"{kind}.completed", "created_at": int(time.time()),
                                                "size": "%dx%d" % wh, "output_format": "png", "index": i,
                                                "job": job.id, **item, "usage": None})
            yield b"data: [DONE]\n\n"
        finally:
            if not job.result.done():
                job.cancel()

    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        status = exc.status_code
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(exc.detail))
        return JSONResponse(ApiError(status, message, code={404: "not_found", 405: "method_not_allowed"}.get(status))
                            .body(), status_code=status)

    async def on_too_large(request: Request, exc: BodyTooLarge) -> Response:
        err = ApiError(413, f"the request body is larger than the limit of {limits.max_body_bytes} bytes",
                       code="request_too_large")
        return JSONResponse(err.body(), status_code=413)

    async def on_error(request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)
        err = ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error")
        return JSONResponse(err.body(), status_code=500)

    routes = [
        Route("/", page), Route("/healthz", healthz),
        Route("/v1/models", models), Route("/v1/models/{model:path}", model),
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/images/edits", edits, methods=["POST"]),
        Route("/v1/images/variations", variations, methods=["POST"]),
        Route("/v1/images/files/{key}.png", image_file, name="image_file"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.queue.stop()  # waiting jobs answer 503; running ones stop at their next step

    app = Starlette(routes=routes, exception_handlers={ApiError: on_api_error, HTTPException: on_http_error,
                                                      BodyTooLarge: on_too_large, Exception: on_error},
                    lifespan=lifespan)
    app.state.service = service
    return Guard(app, service.api_key, limits.max_body_bytes)


class ClientGone(Exception):
    """The client closed the connection while its job waited or ran."""
