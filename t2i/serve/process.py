"""A `t2i serve` process on a free port, run and stopped around a block: the service's tests
(tests/test_serve*.py) and its load benchmark (benchmarks/serve_load.py) talk to a real server so."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*args: str, timeout: float = 90.0, threads: int = 1):
    """Yields (base_url, process) of `python -m t2i.cli serve --port P ARGS`, answering /healthz; stops it
    after. Torch runs on `threads` threads (one: tiny systems on a busy CPU are fastest so)."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    log = tempfile.TemporaryFile("w+")  # the server's stderr (errors, tracebacks), shown when it fails
    proc = subprocess.Popen([sys.executable, "-m", "t2i.cli", "serve", "--port", str(port), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"t2i serve exited ({proc.returncode}): {server_log(proc)}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("t2i serve did not answer /healthz in time")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def server_log(proc) -> str:
    """The last 3000 characters the server wrote to stderr."""
    proc.log.seek(0)
    return proc.log.read()[-3000:]
