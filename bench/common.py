"""What the benchmarks share: servers started on loopback, peak RSS sampling, the machine.

The scripts run as ``python bench/NAME.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

from khazna.client import JOB_WAIT_S

MIB = 1024 * 1024
CHUNK = MIB
RSS_SAMPLE_S = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any KHAZNA_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KHAZNA_")}
    return {**env, **extra}


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class RssSampler:
    """Peak RSS of a process (and its children, unless ``children`` is False) while the
    ``with`` block runs.

    On Linux with the right to reset it (the process's owner, or root), the kernel keeps the
    peak itself: the high-water mark (VmHWM) is reset on entry and read on exit, and
    nothing runs in between. Sampling instead costs CPU on the machine being measured: with
    children, psutil finds them by reading every process's /proc entry, about 1 CPU-second
    in a 7-second ingest on two cores. A child's peaks are added to the parent's, which can
    only overstate the peak of their sum. Elsewhere RSS is sampled every ``RSS_SAMPLE_S``
    in a thread.
    """

    def __init__(self, pid: int, children: bool = True) -> None:
        self._proc = psutil.Process(pid)
        self._children = children
        self.before = self._rss()
        self.peak = self.before
        self.kernel_peak = False  # True once the kernel's high-water marks are in use
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _family(self) -> list[psutil.Process]:
        return [self._proc, *(self._proc.children(recursive=True) if self._children else [])]

    def _rss(self) -> int:
        total = 0
        for proc in self._family():
            with contextlib.suppress(psutil.Error):
                total += int(proc.memory_info().rss)
        return total

    @staticmethod
    def _reset_peak(pid: int) -> bool:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            return False
        return True

    @staticmethod
    def _kernel_peak(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise OSError(f"no VmHWM for process {pid}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._rss())
            except psutil.Error:
                return
            self._stop.wait(RSS_SAMPLE_S)

    def __enter__(self) -> RssSampler:
        family = self._family()
        self.kernel_peak = all(self._reset_peak(p.pid) for p in family)
        if not self.kernel_peak:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kernel_peak:
            total = 0
            for proc in self._family():  # a child born meanwhile: its peak since birth
                with contextlib.suppress(OSError, psutil.Error):
                    total += self._kernel_peak(proc.pid)
            self.peak = max(self.peak, total)
            return
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.before


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    token: str = ""
    home: Path | None = None


def job_end(http: httpx.Client, job_id: int, limit_s: float = 3600) -> dict[str, Any]:
    """The job once done or failed. The hub answers ``GET /api/v1/jobs/{id}?wait=S`` when the
    job ends (or after S seconds, and then it is asked again): waiting costs it nothing,
    where polling cost it about 5 ms of CPU per look, beside the work being measured."""
    deadline = time.monotonic() + limit_s
    while True:
        r = http.get(f"/api/v1/jobs/{job_id}", params={"wait": f"{JOB_WAIT_S:g}"})
        r.raise_for_status()
        state: dict[str, Any] = r.json()
        if state["state"] in ("done", "failed"):
            return state
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not end within {limit_s:g} s: {state}")


def wait_healthy(server: Server, health_path: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text()}")
        try:
            if httpx.get(server.url + health_path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} did not answer within {limit_s:g} s:\n{server.log.read_text()}"
    )


def start(name: str, cmd: list[str], env: dict[str, str], log: Path, health: str) -> Server:
    """Run ``cmd --port PORT`` with its output in ``log``, until ``health`` answers 200."""
    port = free_port()
    with open(log, "wb") as out_log:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=out_log, stderr=subprocess.STDOUT
        )
    server = Server(name, f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_healthy(server, health)
    except BaseException:
        stop(server)
        raise
    return server


def start_khazna(home: Path, **settings: str) -> Server:
    """``khazna serve`` on a new hub folder, with an admin "bench" whose token it holds;
    ``settings`` are KHAZNA_* variables (none of the caller's are passed on)."""
    home.mkdir()
    env = clean_env(KHAZNA_HOME=str(home), **settings)
    out = subprocess.run(
        [sys.executable, "-m", "khazna", "users", "add", "bench", "--admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    cmd = [sys.executable, "-m", "khazna", "serve"]
    server = start("khazna serve", cmd, env, home.parent / "khazna-server.log", "/health")
    server.token = out.stdout.strip().splitlines()[-1]
    server.home = home
    return server


def stop(server: Server) -> None:
    if server.proc.poll() is not None:
        return
    server.proc.terminate()
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def machine(**extra: Any) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        **extra,
    }
