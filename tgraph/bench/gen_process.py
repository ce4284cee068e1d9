"""A generation-benchmark contender's process: start it, ask it, stop it (see gen_worker.py)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_worker.py")


class WorkerError(RuntimeError):
    """The contender's process died or did not answer in time; the message says which and
    quotes its log."""


def last_error_line(path: str) -> str:
    """The last line of a log that reads like an error, else its last line."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "Error" in line or "error:" in line.lower()]
    return (errors or lines or [""])[-1][:300]


class Worker:
    """``python gen_worker.py`` in its own session (so a stop takes its compile workers too),
    JSON lines on stdin/stdout, stderr into ``log_path``."""

    def __init__(self, name: str, python: str, log_path: str) -> None:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [python, WORKER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, env=env, start_new_session=True,
        )  # fmt: skip
        self._buffer = b""

    def ask(self, message: dict, timeout_s: float) -> dict:
        self.send(message)
        return self.receive(timeout_s)

    def send(self, message: dict) -> None:
        """Send a request without waiting (several workers can work at once)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(self._died()) from None

    def receive(self, timeout_s: float) -> dict:
        """The answer to the oldest request not yet answered."""
        return json.loads(self._read_line(timeout_s))

    def _read_line(self, timeout_s: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise WorkerError(f"{self.name}: no answer in {timeout_s:.0f} s (log: "
                                  f"{self.log_path})")  # fmt: skip
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise WorkerError(self._died())
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _died(self) -> str:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self.proc.returncode
        return (f"{self.name}'s process exited with {code}: {last_error_line(self.log_path)} "
                f"(log: {self.log_path})")  # fmt: skip

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the worker and children
        except ProcessLookupError:
            pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"op": "quit"}, 30)
                self.proc.wait(timeout=30)
            except (WorkerError, OSError, ValueError, subprocess.TimeoutExpired):
                self._kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # a dead reader: nothing left to flush to
                    stream.close()
        self._log.close()
