"""Robustness figures, printed as JSON (and saved to benchmarks/results/robustness.json):

- Byzantine: for each attack (sign flip, x100, random) by 20 % of the clients and each rule, the final held-out
  accuracy beside the clean run's (same codec, same seed), and whether it stays within 2 points.
- Validation: fuzz cases thrown at every decoder, at the coordinator's reply handler and at every
  secure-aggregation message a party or the coordinator parses (one party's message mutated in an otherwise
  honest round), and how many were rejected cleanly, accepted (still a valid update; for secure aggregation, a
  round whose sum passes its check), or failed (anything else: must be 0), with the time each target took.
  ``--fuzz-only`` runs just this section and merges it into the saved results, leaving the rest as it was.
- Resume: a simulation killed (SIGKILL) after its first checkpoint and resumed: rounds lost or repeated (0) and
  whether the final adapter equals the uninterrupted run's.

    python benchmarks/robustness.py [--quick] [--cases 10000] [--skip-resume] [--fuzz-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations.byzantine import ByzantineSetup, prepare, run  # noqa: E402
from simulations.testing.fuzz import FuzzReport, fuzz  # noqa: E402
from simulations.testing.fuzz_codecs import codec_targets, meets_layout  # noqa: E402
from simulations.testing.fuzz_secagg import fuzz_secagg, secagg_targets  # noqa: E402
from strategies.codecs.registry import codec_settings  # noqa: E402

DENSE_RULES = ("fedavg", "median", "trimmed-mean", "multi-krum", "norm-bound")
TERNARY_RULES = ("fedavg", "sign-majority")
ATTACKS = ("sign-flip", "scale", "random")


def byzantine_rows(base: ByzantineSetup) -> list[dict]:
    """Every attack x rule, beside the clean run of the same codec."""
    rows = []
    federation = prepare(base)  # every run shares the task, the base score and round 1's honest updates
    for codec, rules in ((codec_settings("dense"), DENSE_RULES),
                         (codec_settings("compeft", density=0.2, alpha_scale=4.0), TERNARY_RULES)):
        clean_run = run(replace(base, codec=codec), federation)
        clean = clean_run.accuracy
        for attack in ATTACKS:
            for rule in rules:
                started = time.perf_counter()
                result = run(replace(base, codec=codec, attack=attack, rule=rule), federation)
                rows.append({"codec": codec.codec, "attack": attack, "rule": rule, "accuracy": result.accuracy,
                             "clean_accuracy": clean, "base_accuracy": result.base_accuracy,
                             "loss": result.loss, "clean_loss": clean_run.loss,
                             "drop_points": 100 * (clean - result.accuracy),
                             "within_2_points": abs(clean - result.accuracy) <= 0.02,
                             "seconds": time.perf_counter() - started})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _fuzz_row(report: FuzzReport, parsed_by: str, seconds: float) -> dict:
    row = {"target": report.target, "parsed_by": parsed_by, "cases": report.cases, "rejected": report.rejected,
           "accepted_valid": report.accepted, "failures": len(report.failures),
           "first_failures": report.failures[:3], "outcomes": dict(sorted(report.outcomes.items())),
           "seconds": round(seconds, 2)}
    print(json.dumps({k: v for k, v in row.items() if k != "first_failures"}), file=sys.stderr, flush=True)
    return row


def fuzz_rows(cases: int) -> list[dict]:
    """Fuzz every decoder, the reply handler and every secure-aggregation message; per target the cases, clean
    rejections, accepted, failures, outcomes by kind and seconds taken."""
    from server.federation import ClientReply, read_reply
    from simulations.testing.fuzz_codecs import FUZZ_DIGEST, accept_dense, reply_content

    targets = dict(codec_targets())
    seeds = targets["dense-fp32"][0]
    targets["reply-handler"] = (seeds, lambda p: read_reply(reply_content(p), accept_dense, FUZZ_DIGEST,
                                                            ClientReply(0))[0])
    rows = []
    for index, (name, (seed_payloads, decode)) in enumerate(sorted(targets.items())):
        started = time.perf_counter()
        report = fuzz(name, decode, seed_payloads, cases=cases, seed=100 + index, check=meets_layout)
        rows.append(_fuzz_row(report, "coordinator", time.perf_counter() - started))
    for index, target in enumerate(secagg_targets().values(), start=len(rows)):
        started = time.perf_counter()
        report = fuzz_secagg(target, cases, seed=100 + index)
        rows.append(_fuzz_row(report, target.parser, time.perf_counter() - started))
    return rows


def merge_fuzz_rows(out: Path, cases: int) -> list[dict]:
    """Run only the fuzzing and replace the ``validation`` section of the results at ``out`` (the other sections
    stay as the last full run left them), so the fuzz figures can be refreshed in minutes."""
    result = json.loads(out.read_text()) if out.exists() else {}
    result["validation"] = fuzz_rows(cases)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result["validation"]


def resume_row() -> dict:
    """Kill a simulation after its first checkpoint, resume it, compare with an uninterrupted run."""
    from simulations.testing.crash_resume import (
        RESUME_RUN,
        adapter_tensors,
        child_env,
        kill_after_checkpoint,
        run_config_text,
        simulate_command,
    )

    with tempfile.TemporaryDirectory(prefix="fedsqueeze-resume-") as tmp:
        reference, killed = Path(tmp) / "reference", Path(tmp) / "killed"
        subprocess.run(simulate_command("--out", str(reference), "--run-config", run_config_text(RESUME_RUN)),
                       env=child_env(), check=True, capture_output=True, cwd=ROOT)
        proc = subprocess.Popen(simulate_command("--out", str(killed), "--run-config", run_config_text(RESUME_RUN)),
                                env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, cwd=ROOT)
        reached = kill_after_checkpoint(proc, killed, 1, timeout_s=900)
        subprocess.run(simulate_command("--resume", str(killed)), env=child_env(), check=True, capture_output=True,
                       cwd=ROOT)
        rounds = [json.loads(line)["round"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
        want, got = adapter_tensors(reference), adapter_tensors(killed)
        expected = list(range(1, int(RESUME_RUN["num-server-rounds"]) + 1))
        return {"killed_after_round": reached, "rounds": rounds,
                "rounds_lost": len(set(expected) - set(rounds)), "rounds_repeated": len(rounds) - len(set(rounds)),
                "adapter_equal": set(want) == set(got) and all(torch.equal(want[n], got[n]) for n in want)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two rounds, fewer fuzz cases")
    parser.add_argument("--cases", type=int, default=10_000, help="fuzz cases per target")
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--fuzz-only", action="store_true",
                        help="run only the fuzzing and merge it into --out (the other sections are kept)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "robustness.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.fuzz_only:
        print(json.dumps(merge_fuzz_rows(Path(args.out), 500 if args.quick else args.cases), indent=2))
        return
    base = ByzantineSetup(rounds=2 if args.quick else 3)
    started = time.perf_counter()
    result = {
        "setup": {"clients": base.clients, "byzantine": list(base.byzantine), "rounds": base.rounds,
                  "local_steps": base.local_steps, "preset": "encoder", "partitioner": "iid"},
        "validation": fuzz_rows(500 if args.quick else args.cases),
        "resume": None if args.skip_resume else resume_row(),
        "byzantine": byzantine_rows(base),
    }
    result["wall_s"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
