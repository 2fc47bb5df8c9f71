"""The ``fedsqueeze`` command: simulate, and launch helpers for a real gRPC deployment."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from server.logs import configure_logging
from simulations.config_args import parse_run_config
from simulations.terminal import LOG_NAME, TerminalCapture

log = logging.getLogger("fedsqueeze")
# ConfigError, ModelNotFoundError and DataNotFoundError are among these; naming them here would import torch and
# transformers before every command, `fedsqueeze report` included.
USER_ERRORS = (ValueError, FileNotFoundError)


def _quiet_environment() -> None:
    # Flower phones home unless told not to; nothing here may reach the network.
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _cmd_simulate(args: argparse.Namespace) -> int:
    user_config = parse_run_config(args.run_config)
    if args.resume:
        from server.checkpoint import load

        _check_resume_flags(args)
        saved = load(Path(args.resume))
        if saved is None:
            raise FileNotFoundError(f"no checkpoint in {Path(args.resume) / 'checkpoint'} to resume from")
        user_config = {**saved.run_config, **user_config, "resume": True}
        args.out = args.resume
    elif not args.out:
        raise ValueError("simulate needs --out DIR (or --resume DIR)")
    if args.preset:
        user_config["preset"] = args.preset
    fail = _partitions(args.fail_partitions, "--fail-partitions")
    byzantine = _partitions(args.byzantine_partitions, "--byzantine-partitions")
    slow = _partitions(args.slow_partitions, "--slow-partitions")
    from server.run_config import resolve

    resolve(user_config)  # a wrong key or value: one line in a second, before torch, Ray and the model load
    from simulations.simulate import simulate

    capture = TerminalCapture(Path(args.out) / LOG_NAME, verbose=args.verbose)
    with ExitStack() as stack:  # output is captured once the input has been checked: bad input writes nothing
        summary = simulate(user_config, out_dir=Path(args.out), max_parallel=args.max_parallel,
                           fail_partitions=fail, byzantine_partitions=byzantine,
                           byzantine_attack=args.byzantine_attack, client_gpus=args.client_gpus,
                           ray_address=args.ray_address, slow_partitions=slow, slow_s=args.slow_s,
                           node_identities=Path(args.node_identities) if args.node_identities else None,
                           node_floor=args.node_floor, overwrite=args.overwrite,
                           on_checked=lambda: stack.enter_context(capture))
    keys = ("preset", "metric", "metric_base", "metric_final", "bytes_up_total", "bytes_up_dense_equivalent",
            "clients_failed_total", "wall_s")
    scores = {k: v for k, v in summary.items() if k.endswith(("_base", "_final")) and not k.startswith(
        ("metric_", "examples_", "response_tokens_"))}
    print(json.dumps({**{k: summary[k] for k in keys}, **scores}, indent=2))
    print(f"outputs in {Path(args.out).resolve()} (log.txt: everything Flower, Ray and the libraries printed)",
          file=sys.stderr)
    return 0


def _check_resume_flags(args: argparse.Namespace) -> None:
    """``--resume DIR`` writes to DIR: refuse an ``--out`` elsewhere (it would be ignored) and ``--overwrite``."""
    if args.out and Path(args.out).expanduser().absolute() != Path(args.resume).expanduser().absolute():
        raise ValueError(f"--resume {args.resume} continues that run in its own directory: drop --out {args.out} "
                         "(copy the directory first to keep the original)")
    if args.overwrite:
        raise ValueError("--overwrite replaces a run and --resume continues it: choose one")


def _partitions(text: str, flag: str) -> frozenset[int]:
    try:
        return frozenset(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated partition ids, got {text!r}") from None


def _cmd_report(args: argparse.Namespace) -> int:
    from simulations.report import ReportError, render, report
    from simulations.sweep_report import TABLE_FILE, is_sweep, report_sweep

    if is_sweep(Path(args.directory)):
        try:
            document, plots = report_sweep(Path(args.directory), plots=not args.no_plots)
        except ReportError as exc:
            print(f"fedsqueeze: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(document, indent=2) if args.json else (Path(args.directory) / TABLE_FILE).read_text())
        if plots:
            print(f"plots     {len(plots)} drawn again under {Path(args.directory) / 'plots'}", file=sys.stderr)
        return 0
    try:
        figures, plots = report(Path(args.directory), plots=not args.no_plots)
    except ReportError as exc:
        print(f"fedsqueeze: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    if plots:
        print(f"plots     {len(plots)} drawn again under {Path(args.directory) / 'plots'}", file=sys.stderr)
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    import torch

    from simulations.attacks.harness import AttackConfig, run

    config = (AttackConfig.quick() if args.quick else AttackConfig()).with_overrides(
        parse_run_config(args.run_config))
    torch.set_num_threads(max(1, args.threads))
    with TerminalCapture(Path(args.out) / LOG_NAME, verbose=args.verbose):
        result = run(Path(args.out), config)
    print(json.dumps({"rows": len(result["rows"]), "wall_s": result["wall_s"]}, indent=2))
    print(f"outputs in {Path(args.out).resolve()} (attacks.json, attacks.md, plots/)", file=sys.stderr)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from client.task.exported import answer, load_adapter
    from client.task.quiet import quiet_libraries

    quiet_libraries()
    prompts = list(args.prompt) or [line.strip() for line in sys.stdin if line.strip()]
    if not prompts:
        raise ValueError("generate needs --prompt TEXT (repeatable) or prompts on standard input, one per line")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    model, tokenizer = load_adapter(Path(args.adapter), args.model)
    for prompt, text in zip(prompts, answer(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                            system=args.system), strict=True):
        print(json.dumps({"prompt": prompt, "generation": text}) if args.json else text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``fedsqueeze`` subcommand."""
    parser = argparse.ArgumentParser(prog="fedsqueeze", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run a federation in-process (Flower simulation engine)")
    sim.add_argument("--out", default="", help="output directory (metrics.jsonl, summary.json, adapter/, plots/)")
    sim.add_argument("--resume", default="", metavar="DIR",
                     help="continue the run in DIR after its last complete round (same run config; "
                          "--run-config may raise num-server-rounds)")
    sim.add_argument("--overwrite", action="store_true",
                     help="write into an --out directory that holds an earlier run, replacing it (its checkpoint "
                          "is discarded; without this flag such a directory is refused)")
    sim.add_argument("--byzantine-partitions", default="",
                     help="comma-separated partition ids whose updates are replaced by an attack (robustness tests)")
    sim.add_argument("--byzantine-attack", default="sign-flip", help="sign-flip, scale (x100), random, or inflate "
                     "(sign-flip claiming 1000x its examples)")
    sim.add_argument("--preset", default="", help="task preset: sft (default), fortunes or encoder")
    sim.add_argument("--run-config", default="", help='overrides, e.g. "num-server-rounds=2 num-clients=4"')
    sim.add_argument("--max-parallel", type=int, default=0, help="clients training at once (default min(n, 3))")
    sim.add_argument("--fail-partitions", default="", help="comma-separated partition ids that fail on purpose")
    sim.add_argument("--slow-partitions", default="",
                     help="comma-separated partition ids that reply --slow-s seconds late (stragglers)")
    sim.add_argument("--slow-s", type=float, default=10.0, help="how late the slow partitions reply (default 10)")
    sim.add_argument("--node-identities", default="", metavar="DIR",
                     help="node key pairs (fedsqueeze certs DIR --nodes N; pass DIR/node-keys): simulated node i "
                          "signs its secure-aggregation keys with node-i.key and trusts every .pub there")
    sim.add_argument("--node-floor", default="", metavar="'KEY=VALUE ...'",
                     help="the privacy floor every simulated node holds, e.g. 'secagg=true min-parties=3 "
                          "min-dp-noise=0.5 codecs=compeft' (a round below it is refused by the node)")
    sim.add_argument("--verbose", action="store_true",
                     help="show Flower's, Ray's and the libraries' log lines on the terminal too (always in "
                          "OUT/log.txt)")
    sim.add_argument("--client-gpus", type=float, default=0.0,
                     help="fraction of a GPU per client, e.g. 0.25 for four clients per GPU (default 0: CPU); "
                          "above 0 the run's device defaults to cuda")
    sim.add_argument("--ray-address", default="",
                     help="join a running Ray cluster (auto on one of its nodes, or HOST:6379) instead of "
                          "starting a local Ray")
    sim.set_defaults(func=_cmd_simulate)

    attack = sub.add_parser("attack", help="run the privacy attacks against every defence")
    attack.add_argument("--out", required=True, help="output directory (attacks.json, attacks.md, plots/)")
    attack.add_argument("--run-config", default="",
                        help='attack settings, e.g. "batches=20 defences=none,dp-1 attacks=token"')
    attack.add_argument("--quick", action="store_true", help="a two-minute version (few batches, main defences)")
    attack.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    attack.add_argument("--verbose", action="store_true",
                        help="show the libraries' log lines on the terminal too (always in OUT/log.txt)")
    attack.set_defaults(func=_cmd_attack)

    generate = sub.add_parser("generate", help="answer prompts with a run's exported adapter (greedy)")
    generate.add_argument("--adapter", required=True, help="the adapter directory a run wrote (OUT/adapter)")
    generate.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; default: stdin lines)")
    generate.add_argument("--model", default="", help="the base model (default: the adapter config's base)")
    generate.add_argument("--system", default="", help="a system turn before each prompt")
    generate.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer at most (default 64)")
    generate.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    generate.set_defaults(func=_cmd_generate)

    summary = sub.add_parser("report", help="summarise a run directory (finished, stopped or resumed) or a sweep "
                                           "directory, and redraw its plots")
    summary.add_argument("directory", help="the run's --out directory, or a sweep's")
    summary.add_argument("--json", action="store_true", help="print the figures as JSON")
    summary.add_argument("--no-plots", action="store_true", help="do not redraw the plots")
    summary.set_defaults(func=_cmd_report)

    from simulations.deploy_cli import add_deploy_commands
    from simulations.evaluate_cli import add_evaluate_command
    from simulations.sweep_cli import add_sweep_command

    add_deploy_commands(sub)
    add_evaluate_command(sub)
    add_sweep_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and exit 2, never a traceback."""
    _quiet_environment()
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"fedsqueeze: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedsqueeze: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
