"""A private, throw-away ``redis-server`` for tests, including fault-injection tests.

Usage::

    from tests.redis_server import start_redis_server

    with start_redis_server() as server:          # free port on 127.0.0.1, fresh temp dir
        client = redis.Redis.from_url(server.url)
        server.stop()                             # connections are refused until...
        server.restart()                          # ...it runs again on the same port (empty!)
        server.freeze()                           # SIGSTOP: accepts connections, never answers
        server.thaw()                             # SIGCONT

The server keeps nothing on disk (``--save "" --appendonly no``), so a restart starts empty, like a
Redis that lost its data. It only listens on 127.0.0.1. ``close()`` (or leaving the ``with`` block)
stops it and removes its temp dir; if a test forgets, the process is killed when the object is
garbage-collected or the interpreter exits, so no stray servers survive a test run.

The executable is ``$REDIS_SERVER_BIN`` if set, else ``redis-server`` from ``$PATH``. The helper uses
raw sockets (not redis-py) to check readiness so it has no dependencies.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# With no port given, a free port is picked; another process may grab it before redis-server binds
# it, so starting is retried on fresh ports this many times.
_PORT_ATTEMPTS = 5


def _redis_server_binary() -> str:
    binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found: install it or set REDIS_SERVER_BIN")
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _server_pid(port: int) -> int | None:
    """The pid of the Redis answering on ``port`` (None if none answers yet).

    Checking the pid, not just PING, guarantees that a server which raced us for a free port is
    never mistaken for ours.
    """
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                data = sock.recv(65536)
                if not data:
                    return None
                reply += data
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup (GC / interpreter exit); must not raise."""
    if process.poll() is None:
        process.kill()
        process.wait()


class RedisServer:
    """One ``redis-server`` process on a fixed port of 127.0.0.1; see the module docstring."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._frozen = False

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self) -> None:
        """Launch the server (if not running) and wait until it answers PING; RuntimeError if it can't."""
        if self.running:
            return
        command = [
            _redis_server_binary(),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._process = process
        self._finalizer = weakref.finalize(self, _kill, process)
        self._frozen = False
        deadline = time.monotonic() + START_TIMEOUT_S
        while _server_pid(self.port) != process.pid:
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{self._log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after a grace period); idempotent."""
        process = self._process
        if process is None:
            return
        if self._frozen:
            self.thaw()  # a stopped process would only act on SIGTERM once continued
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._finalizer is not None:
            self._finalizer.detach()
        self._process = None

    def restart(self) -> None:
        """Stop if running, then start again on the same port (with an empty dataset)."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """Suspend the process (SIGSTOP): the kernel still accepts connections but nothing answers,
        which is how a hung or partitioned server looks to clients."""
        if not self.running:
            raise RuntimeError("redis-server is not running")
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """Resume a frozen server (SIGCONT)."""
        if self._process is not None and self._frozen:
            self._process.send_signal(signal.SIGCONT)
        self._frozen = False

    def close(self) -> None:
        """Stop the server and remove its temp dir."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "running" if self.running else "stopped"
        return f"RedisServer({self.url}, {state})"


def start_redis_server(port: int | None = None) -> RedisServer:
    """Start a private redis-server on 127.0.0.1 (on ``port``, or on a free port) in a new temp dir."""
    if port is None:
        for _ in range(_PORT_ATTEMPTS - 1):
            try:
                return _start_in_new_dir(_free_port())
            except RuntimeError:
                continue  # most likely the port was taken meanwhile: try another
    return _start_in_new_dir(port if port is not None else _free_port())


def _start_in_new_dir(port: int) -> RedisServer:
    server = RedisServer(port, Path(tempfile.mkdtemp(prefix="ken-redis-")))
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server
