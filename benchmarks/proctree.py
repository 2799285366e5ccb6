"""Peak memory and CPU time of a process and its descendants (Beam's local worker processes), from /proc.

Used by dedup_scale.py and scale_memory.py. Linux only.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (fields 14, 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the PPid fields of /proc."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            children.setdefault(int(_status(int(pid))["PPid"]), []).append(int(pid))
        except (OSError, KeyError, ValueError):
            continue
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


class TreeMonitor:
    """Polls a process tree every ``interval`` seconds until stopped.

    Per process: its own peak RSS (VmHWM, kept by the kernel, so no peak falls between two polls
    while the process lives), its last seen CPU seconds and its command line. For the tree: the
    largest sum of current RSS (VmRSS) seen in one poll. A process that starts and ends between two
    polls is missed; one that ends after a poll loses only what it did since that poll.
    """

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval = root, interval
        self.procs: dict[int, dict] = {}
        self.peak_tree_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        total = 0
        for pid in descendants(self.root):
            try:
                st = _status(pid)
                rss = int(st.get("VmRSS", "0 kB").split()[0]) * 1024
                hwm = int(st.get("VmHWM", "0 kB").split()[0]) * 1024
                cpu = _cpu_seconds(pid)
                rec = self.procs.setdefault(pid, {"pid": pid, "cmd": _cmdline(pid), "ppid": int(st["PPid"]),
                                                  "peak_rss": 0, "cpu_s": 0.0})
            except (OSError, KeyError, ValueError, IndexError):
                continue
            rec["peak_rss"] = max(rec["peak_rss"], hwm)
            rec["cpu_s"] = max(rec["cpu_s"], cpu)
            total += rss
        self.peak_tree_rss = max(self.peak_tree_rss, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(p["cpu_s"] for p in self.procs.values())


def run_monitored(cmd: list[str], interval: float = 0.2, **popen_kwargs) -> tuple[subprocess.CompletedProcess, TreeMonitor, float]:
    """Run ``cmd`` to completion while monitoring its tree; (result, monitor, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen_kwargs)
    monitor = TreeMonitor(proc.pid, interval)
    out = proc.communicate()[0]
    wall = time.perf_counter() - t0
    monitor.stop()
    return subprocess.CompletedProcess(cmd, proc.returncode, out), monitor, wall


def is_beam_worker(cmd: str) -> bool:
    """Beam's local multi-process workers run apache_beam.runners.worker.sdk_worker_main, or
    curate.local_worker under curate.run (Beam starts each through ``/bin/sh -c``; the shell itself
    is not the worker)."""
    return ("sdk_worker_main" in cmd or "curate.local_worker" in cmd) and not cmd.split()[0].endswith("sh")
