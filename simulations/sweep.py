"""``fedsqueeze sweep``: run every configuration × seed of a plan (simulations/sweep_plan.py) as an ordinary
``fedsqueeze simulate`` run in its own process, into ``OUT/<configuration>/seed-<s>/``, and write the comparison
(simulations/sweep_report.py).

Resumable: running the same sweep again skips finished runs, resumes a killed run from its last checkpoint and
starts the rest; a run directory holding a run of other settings is refused before anything starts. ``--parallel
N`` runs N simulations at once (each with its own local Ray); a run that fails is recorded (``sweep-failure.txt``:
its last error line) and the sweep goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from server.checkpoint import DIRECTORY as CHECKPOINT_DIR
from server.checkpoint import MANIFEST
from server.outputs import RUN_OUTPUTS
from simulations.sweep_plan import RunSpec, SweepPlan
from simulations.sweep_report import LM_EVAL_FILE, SWEEP_FILE, TABLE_FILE, write_results

RUN_RECORD = "sweep-run.json"  # the run config the sweep gave the run, to refuse a changed sweep in the same folder
FAILURE = "sweep-failure.txt"
OUTPUT = "sweep-output.txt"  # what the simulate process printed


def config_text(values: dict[str, object]) -> str:
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower()}" for k, v in values.items())


def run_state(run: RunSpec) -> str:
    """``finished`` (summary.json), ``resume`` (a checkpoint), ``restart`` (outputs but no checkpoint) or ``new``."""
    if (run.directory / "summary.json").is_file():
        return "finished"
    if (run.directory / CHECKPOINT_DIR / MANIFEST).is_file():
        return "resume"
    if any((run.directory / name).exists() for name in RUN_OUTPUTS):
        return "restart"
    return "new"


def check_existing(plan: SweepPlan) -> None:
    """Refuse a run directory that holds a run of other settings (ValueError naming it), before anything starts."""
    for run in plan.runs:
        record = run.directory / RUN_RECORD
        if record.is_file():
            try:
                before = json.loads(record.read_text())["run_config"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{record} is damaged: delete {run.directory} to run it again") from None
            if before != json.loads(json.dumps(run.run_config)):
                changed = sorted(set(before) ^ set(run.run_config) | {k for k in before if k in run.run_config and
                                                                       before[k] != run.run_config[k]})
                raise ValueError(f"{run.directory} holds a run of other settings ('{changed[0]}' differs): choose "
                                 "another --out, or delete that folder to run it again")
        elif run_state(run) != "new":
            raise ValueError(f"{run.directory} holds a run the sweep did not start: choose another --out")


def simulate_command(run: RunSpec, state: str, max_parallel: int, extra: list[str]) -> list[str]:
    """The ``fedsqueeze simulate`` command line that starts, restarts or resumes ``run``."""
    where = (["--resume", str(run.directory)] if state == "resume" else
             ["--out", str(run.directory), *(["--overwrite"] if state == "restart" else [])])
    parallel = ["--max-parallel", str(max_parallel)] if max_parallel else []
    return [sys.executable, "-m", "simulations.cli", "simulate", *where, *parallel, *extra,
            "--run-config", config_text(run.run_config)]


def _last_error(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "it printed nothing"
    errors = [line for line in lines if line.startswith("fedsqueeze: error:") or "Error" in line]
    return (errors or lines or ["it printed nothing"])[-1][:300]


def _env() -> dict[str, str]:
    # Flower starts its processes by name: this interpreter's folder goes first on PATH.
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0"}


class _Running:
    def __init__(self, run: RunSpec, command: list[str], started: float) -> None:
        self.run, self.started = run, started
        run.directory.mkdir(parents=True, exist_ok=True)
        (run.directory / FAILURE).unlink(missing_ok=True)
        self.output = (run.directory / OUTPUT).open("a")
        self.process = subprocess.Popen(command, stdout=self.output, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=_env())


def _evaluate(run: RunSpec, tasks: tuple[str, ...], say: Callable[[str], object]) -> None:
    if not tasks or (run.directory / LM_EVAL_FILE).exists() or not (run.directory / "adapter").is_dir():
        return
    command = [sys.executable, "-m", "simulations.cli", "evaluate", "--adapter", str(run.directory / "adapter"),
               "--tasks", ",".join(tasks), "--out", str(run.directory / LM_EVAL_FILE)]
    with (run.directory / OUTPUT).open("a") as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=_env()).returncode
    if code:
        say(f"  lm-eval of {run.name} seed {run.seed} failed ({_last_error(run.directory / OUTPUT)})")


def run_sweep(plan: SweepPlan, *, parallel: int = 1, max_parallel: int = 0, simulate_args: list[str] | None = None,
              say: Callable[[str], object] = print) -> dict:
    """Run every run of ``plan`` not yet finished (``parallel`` at a time, each with ``max_parallel`` clients
    training at once), recording failures, then write sweep.json, sweep.md and the plots; returns sweep.json's
    document."""
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    check_existing(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    record = plan.as_record()
    runs = [{"name": r.name, "seed": r.seed, "directory": str(r.directory.relative_to(plan.out))} for r in plan.runs]
    write_results(plan.out, record, runs, plots=False)  # a sweep killed now can still be reported
    pending = [r for r in plan.runs if run_state(r) != "finished"]
    say(f"sweep: {len(plan.configurations)} configuration(s) × {len(plan.seeds)} seed(s) = {len(plan.runs)} runs; "
        f"{len(plan.runs) - len(pending)} already finished, {len(pending)} to run ({parallel} at a time)")
    for run in plan.runs:
        if run not in pending:
            _evaluate(run, plan.evaluate_tasks, say)
    running: list[_Running] = []
    failed = 0
    try:
        while pending or running:
            while pending and len(running) < parallel:
                run = pending.pop(0)
                state = run_state(run)
                run.directory.mkdir(parents=True, exist_ok=True)
                (run.directory / RUN_RECORD).write_text(json.dumps({"name": run.name, "seed": run.seed,
                                                                    "run_config": run.run_config}, indent=2))
                say(f"  {'resuming' if state == 'resume' else 'starting'} {run.name} seed {run.seed} -> "
                    f"{run.directory}")
                running.append(_Running(run, simulate_command(run, state, max_parallel, simulate_args or []),
                                        time.monotonic()))
            time.sleep(0.5)
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                job.output.close()
                took = time.monotonic() - job.started
                if job.process.returncode == 0:
                    say(f"  finished {job.run.name} seed {job.run.seed} in {took:.0f} s")
                    _evaluate(job.run, plan.evaluate_tasks, say)
                else:
                    failed += 1
                    reason = f"exit {job.process.returncode}: {_last_error(job.run.directory / OUTPUT)}"
                    (job.run.directory / FAILURE).write_text(reason + "\n")
                    say(f"  FAILED {job.run.name} seed {job.run.seed} ({reason}); see {job.run.directory / OUTPUT}")
                write_results(plan.out, record, runs, plots=False)
    finally:
        for job in running:  # interrupted: the runs resume from their checkpoints next time
            job.process.terminate()
        for job in running:
            try:
                job.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.process.kill()
            job.output.close()
    document, plots = write_results(plan.out, record, runs)
    say(f"sweep: {len(plan.runs) - failed} of {len(plan.runs)} runs finished" + (f", {failed} failed" if failed
                                                                                  else "")
        + f"; {plan.out / TABLE_FILE}, {plan.out / SWEEP_FILE}, {len(plots)} plot(s) in {plan.out / 'plots'}")
    return document
