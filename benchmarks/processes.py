"""The benchmark's worker subprocesses and the machine facts it records."""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time

import worker  # stdlib-only at import; TensorFlow loads in the subprocesses


class Proc:
    """One worker subprocess and its pipe."""

    def __init__(self, role, cfg, log_path):
        ctx = mp.get_context("spawn")
        self.role = role
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker.main, args=(child, role, cfg, str(log_path)),
                                   daemon=True, name=f"bench-{role}")
        self.process.start()
        self.log_path = log_path
        self.info = None
        self.error = None

    def _receive(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(1.0):
                return self.conn.recv()
            if not self.process.is_alive():
                return {"ok": False, "error": f"process exited with code "
                                              f"{self.process.exitcode} (see {self.log_path})"}
        return {"ok": False, "error": f"no answer within {timeout:.0f} s"}

    def wait_ready(self, timeout=3600):
        reply = self._receive(timeout)
        if reply["ok"]:
            self.info = reply["result"]
        else:
            self.error = reply["error"]
        return self.ok

    @property
    def ok(self):
        return self.error is None

    def ask(self, cmd, timeout=1800, **args):
        if not self.ok:
            return None
        self.conn.send({"cmd": cmd, "args": args})
        reply = self._receive(timeout)
        if not reply["ok"]:
            self.error = reply["error"]
            return None
        return reply["result"]

    def stop(self):
        try:
            self.conn.send({"cmd": "stop"})
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


def log(message):
    print(message, flush=True)


# ----------------------------------------------------------------------------- machine


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
        flags = open("/proc/cpuinfo").read()
        info["avx512"] = "avx512f" in flags
        info["amx"] = "amx_tile" in flags
    except OSError:
        info["cpu"] = platform.processor()
    info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        info["memory_gb"] = round(int(meminfo["MemTotal"].split()[0]) / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    return info


def available_memory_gb():
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        return int(meminfo["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return float("inf")


def load_average():
    return [round(x, 2) for x in os.getloadavg()]
