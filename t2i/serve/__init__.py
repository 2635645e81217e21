"""Floor 6: `t2i serve`, an HTTP service over the systems: OpenAI's images API (so the official `openai`
client works with `base_url`), a bounded job queue with per-step progress as server-sent events, and a
page at `/` (plain HTML/JS in `page/index.html`, no build step).

Built on Starlette, served by uvicorn. Not FastAPI: a request's values are checked once, by
`GenerationRequest`, and its one-line ValueErrors become OpenAI-shaped 400s here (t2i.serve.params);
FastAPI's pydantic models would check them a second time, in a second place, and answer in its own 422
shape. Starlette is the small ASGI core FastAPI itself runs on (routing, multipart forms via
python-multipart, streaming responses for server-sent events), and uvicorn is the ASGI server both use.

Safe by default: binds 127.0.0.1; an optional API key (`--api-key` or $T2I_API_KEY) is compared with
`hmac.compare_digest`; bodies, uploads, image sides, n and steps are limited; requests name no files.

    t2i serve [--host 127.0.0.1] [--port 8000] [--systems ldm] [--api-key K] [--max-body-mb 8] ...
"""

from __future__ import annotations

from dataclasses import dataclass

from t2i.serve.app import Service, create_app, run_system
from t2i.serve.params import ApiError, Limits

__all__ = ["ApiError", "Limits", "Listen", "Service", "create_app", "load_systems", "run_system", "serve"]


def load_systems(names: list[str], device: str = "cpu", tiny: bool = False) -> tuple[dict, dict[str, str]]:
    """(name -> system, name -> why it failed to load): a system that does not load is answered 503, and the
    others serve. tiny: tiny random systems, for tests (t2i.serve.tiny)."""
    if tiny:
        from t2i.serve.tiny import tiny_systems

        return tiny_systems(names), {}
    import t2i

    systems, failed = {}, {}
    for name in names:
        try:
            systems[name] = t2i.load(name, device=device).eval()
        except Exception as e:  # noqa: BLE001  (one broken system must not keep the others from serving)
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return systems, failed


@dataclass(frozen=True)
class Listen:
    """Where and for whom the service answers: address, port, an optional API key, uvicorn's log level."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    log_level: str = "info"


def serve(names: list[str], listen: Listen = Listen(), *, limits: Limits = Limits(), max_waiting: int = 8,
          device: str = "cpu", tiny: bool = False) -> None:
    """Load the systems and answer until interrupted."""
    import sys

    import uvicorn

    systems, failed = load_systems(names, device, tiny)
    for name, why in failed.items():
        print(f"t2i serve: {name} is unavailable (answered 503): {why}", file=sys.stderr)
    if not systems:
        raise ValueError("no system loaded: " + "; ".join(f"{n}: {w}" for n, w in failed.items()))
    host, port = listen.host, listen.port
    if host not in ("127.0.0.1", "localhost", "::1") and listen.api_key is None:
        print(f"t2i serve: warning: listening on {host} without an API key: anyone who reaches this port can "
              "generate (give --api-key or $T2I_API_KEY)", file=sys.stderr)
    app = create_app(Service(systems, failed, limits, max_waiting, listen.api_key))
    print(f"t2i serve: {', '.join(sorted(systems))} on http://{host}:{port}/ (OpenAI base_url "
          f"http://{host}:{port}/v1)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=listen.log_level, timeout_graceful_shutdown=5)
