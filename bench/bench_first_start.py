"""First start of the quick start, measured from outside as a new user meets it.

    python3 bench/bench_first_start.py [--repo .] [--keep DIR] [--timeout-s 3600]

Clones the repository (its committed HEAD) into a temporary folder, runs ``./scripts/run-demo.sh``
there on a free port and records, from the moment the script starts: when the install finished
(the script's "demo: serving on" line), when the server first answered ``/healthz``, and when each
demo task was listed by ``/v1/subnetworks`` and answered a prediction. Then it stops the demo and
runs it a second time in the same clone (everything cached) and records the same. It prints a table
with each figure, the target of issue 13 and the ratio figure / target, and the machine's load
average (the figures depend on it: the fine-tunes share the CPU with whatever else runs).
Standard library only, so it runs before any install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

INSTALLED_MARK = "demo: serving on"
#: Issue 13's targets, in seconds: the server answers within 60 s of the install, the first task is
#: usable within 5 minutes (on an idle 2-core machine), a second run serves within 15 s.
TARGET_ANSWER_AFTER_INSTALL_S = 60.0
TARGET_FIRST_TASK_S = 300.0
TARGET_SECOND_RUN_S = 15.0


@dataclass
class Run:
    """Seconds from the start of ``run-demo.sh`` to each event (``None``: not reached)."""

    installed: float | None = None
    first_answer: float | None = None
    tasks: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> object | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def predicts(url: str, task: str) -> bool:
    body = json.dumps({"task": task, "inputs": ["a first request"]}).encode()
    request = urllib.request.Request(f"{url}/v1/predict", data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def demo_tasks(clone: Path) -> list[str]:
    """The task names the demo builds (read from the clone, without importing anything heavy)."""
    out = subprocess.run(
        [sys.executable, "-c", "from examples.build_demo import RECIPES; print(','.join(RECIPES))"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().split(",")


def run_demo(clone: Path, port: int, tasks: list[str], log_path: Path, timeout_s: float) -> Run:
    """Start run-demo.sh, follow it until every task answers (or ``timeout_s``), then stop it."""
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KEN_", "VIRTUAL_ENV"))}
    env["KEN_PORT"] = str(port)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    run = Run()
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["./scripts/run-demo.sh"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while len(run.tasks) < len(tasks):
            now = time.monotonic() - started
            if process.poll() is not None:
                raise RuntimeError(f"run-demo.sh exited with {process.returncode}; see {log_path}")
            if now > timeout_s:
                print(f"bench_first_start: timed out after {timeout_s:.0f} s; see {log_path}", file=sys.stderr)
                break
            if run.installed is None and INSTALLED_MARK in log_path.read_text(errors="replace"):
                run.installed = now
            if run.first_answer is None and get_json(f"{url}/healthz") is not None:
                run.first_answer = now
            if run.first_answer is not None:
                listing = get_json(f"{url}/v1/subnetworks") or {}
                for manifest in listing.get("subnetworks", []) if isinstance(listing, dict) else []:
                    task = manifest.get("task")
                    if task in tasks and task not in run.tasks and predicts(url, task):
                        run.tasks[task] = time.monotonic() - started
                        print(f"bench_first_start: {task} answered at {run.tasks[task]:.0f} s", file=sys.stderr)
            time.sleep(0.5)
    finally:
        stop(process)
    return run


def stop(process: subprocess.Popen) -> None:
    """End run-demo.sh and everything it started (server, background builder): its process group."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(30)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group outlived the script


def fmt(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f}"


def ratio(seconds: float | None, target: float) -> str:
    return "" if seconds is None else f"{seconds / target:.2f}"


def table(first: Run, second: Run, tasks: list[str]) -> str:
    rows = []
    after_install = (
        None if first.first_answer is None or first.installed is None else first.first_answer - first.installed
    )
    rows.append(("first run: install finished", first.installed, None))
    rows.append(("first run: server answers, after the install", after_install, TARGET_ANSWER_AFTER_INSTALL_S))
    for index, task in enumerate(tasks):
        since_install = None
        if task in first.tasks and first.installed is not None:
            since_install = first.tasks[task] - first.installed
        target = TARGET_FIRST_TASK_S if index == 0 else None
        rows.append((f"first run: {task} answers, after the install", since_install, target))
    rows.append(("second run: server answers", second.first_answer, None))
    built = [task for task in tasks if task in first.tasks]
    last = max(second.tasks.values()) if built and all(task in second.tasks for task in built) else None
    rows.append((f"second run: {', '.join(built) or 'no task'} answer(s)", last, TARGET_SECOND_RUN_S))
    lines = ["| step | seconds | target s | seconds / target |", "|---|---:|---:|---:|"]
    for name, seconds, target in rows:
        lines.append(f"| {name} | {fmt(seconds)} | {'' if target is None else f'{target:.0f}'} | "
                     f"{'' if target is None else ratio(seconds, target)} |")  # fmt: skip
    return "\n".join(lines)


def second_run_only(clone: Path) -> int:
    """Time run-demo.sh in a clone whose tasks are built: the server answers, then every built task."""
    manifest = json.loads((clone / ".cache" / "demo" / "manifest.json").read_text())
    built = [task for task in demo_tasks(clone) if "subnetwork" in manifest["tasks"].get(task, {})]
    load = os.getloadavg()
    second = run_demo(clone, free_port(), built, clone / ".cache" / "second-run.log", 600.0)
    print(f"{os.cpu_count()} CPUs; load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load)} at the start")
    last = max(second.tasks.values()) if built and all(task in second.tasks for task in built) else None
    lines = ["| step | seconds | target s | seconds / target |", "|---|---:|---:|---:|"]
    lines.append(f"| second run: server answers | {fmt(second.first_answer)} | | |")
    lines.append(f"| second run: {', '.join(built) or 'no task'} answer(s) | {fmt(last)} | "
                 f"{TARGET_SECOND_RUN_S:.0f} | {ratio(last, TARGET_SECOND_RUN_S)} |")  # fmt: skip
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="repository to clone")
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary folder, removed)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="give up on the first run after this long")
    parser.add_argument(
        "--second-run-only",
        type=Path,
        metavar="CLONE",
        help="only time a second run in CLONE (a kept clone whose first run built the tasks)",
    )
    args = parser.parse_args(argv)
    if args.second_run_only is not None:
        return second_run_only(args.second_run_only)
    with tempfile.TemporaryDirectory(prefix="ken-first-start-") as tmp:
        clone = args.keep or Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(args.repo.resolve()), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True)
        tasks = demo_tasks(clone)
        load_before = os.getloadavg()
        logs = clone / ".cache"
        logs.mkdir(exist_ok=True)
        first = run_demo(clone, free_port(), tasks, logs / "first-run.log", args.timeout_s)
        load_after = os.getloadavg()
        # The second run waits for the tasks the first one finished (a task it did not finish is built again).
        built = [task for task in tasks if task in first.tasks]
        second = run_demo(clone, free_port(), built, logs / "second-run.log", 600.0)
        print(f"commit {commit.stdout.strip()}, {os.cpu_count()} CPUs; load average (1/5/15 min) "
              f"{'/'.join(f'{x:.1f}' for x in load_before)} at the start, "
              f"{'/'.join(f'{x:.1f}' for x in load_after)} after the first run")  # fmt: skip
        print(table(first, second, tasks))
        if args.keep is None:
            print(f"(logs were in {logs}; pass --keep DIR to keep the clone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
