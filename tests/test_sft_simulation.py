"""End to end, kind=sft in Flower's simulation engine: a tiny causal LM made from a config (with SmolLM2's
tokenizer and chat template) fine-tuned on WordNet definitions split by domain, with ComPEFT and with secure
aggregation; the exported adapter, reloaded by PEFT in a fresh process, reproduces the reported NLL and samples."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.simulate import simulate

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# One Ray actor runs every client in turn: each actor imports torch, transformers and peft (seconds of CPU), while
# the tiny model trains a client in well under a second, so on 2 cores a second or third actor costs more than it
# saves. The results are the same whatever the number of actors (each client's training is seeded).
ACTORS = 1


def _tiny_sft(model: str, **overrides) -> dict:
    return {"preset": "sft", "model": model, "per-topic": 20, "heldout": 16, "max-length": 64, "local-steps": 4,
            "batch-size": 4, "lr": 1e-2, "eval-samples": 4, "max-new-tokens": 6, "num-clients": 3,
            "num-server-rounds": 2, **overrides}


def _rows(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


RELOAD = """
import json, sys
from pathlib import Path
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from client.task.build import Task, load_splits
from client.task.kinds.registry import kind_of
from client.task.spec import TaskSpec

out = Path(sys.argv[1])
spec = TaskSpec.from_record(json.loads((out / "summary.json").read_text())["task"])
_, heldout = load_splits(spec)
base = AutoModelForCausalLM.from_pretrained(spec.model, dtype=torch.float32)
model = PeftModel.from_pretrained(base, out / "adapter")
tokenizer = AutoTokenizer.from_pretrained(out / "adapter")  # saved beside the adapter, chat template and all
kind = kind_of(spec.kind)
task = Task(spec, model, tokenizer, torch.device("cpu"), kind, kind.make_head(spec, tokenizer, heldout,
                                                                              torch.device("cpu")))
result = task.evaluate(heldout.dataset)
print(json.dumps({"metrics": result.metrics, "generations": [s["generation"] for s in result.samples]}))
"""


@pytest.fixture(scope="module")
def compeft_run(tmp_path_factory: pytest.TempPathFactory, tiny_causal_lm: str) -> tuple[dict, dict, Path]:
    """ComPEFT with error feedback, FedAdam on the coordinator and FedProx on the clients, 2 of 4 clients sampled a
    round, 2 rounds: its config, summary and output folder. One test checks what it learnt and exported, another
    that a run cut after round 1 and resumed reproduces it (the same clients sampled whatever node ids Flower hands
    out, each client's residual and the server optimizer's moments restored)."""
    config = _tiny_sft(tiny_causal_lm, codec="compeft", **{"compeft-density": 0.2, "error-feedback": True,
                                                           "server-optimizer": "fedadam", "server-lr": 3e-3,
                                                           "fedprox-mu": 0.1, "num-clients": 4,
                                                           "fraction-train": 0.5})
    out = tmp_path_factory.mktemp("compeft")
    return config, simulate(config, out_dir=out, max_parallel=ACTORS), out


def test_sft_with_compeft_learns_and_its_adapter_reloads_in_a_fresh_process(compeft_run: tuple[dict, dict, Path]
                                                                             ) -> None:
    _, summary, run = compeft_run
    assert summary["metric"] == "perplexity" and summary["higher_is_better"] is False
    assert summary["perplexity_final"] < summary["perplexity_base"]
    for key in ("nll", "rouge_l", "exact_match"):
        assert f"{key}_base" in summary and f"{key}_final" in summary
    rows = _rows(run, "metrics.jsonl")
    assert all(r["applied"] and r["clients_ok"] == 2 and r["evaluated"] and "perplexity" in r for r in rows)
    assert all(0 < c["bytes_up"] < c["dense_fp32_bytes_up"] / 3 for r in rows for c in r["clients"])
    samples = _rows(run, "samples.jsonl")
    assert [s["round"] for s in samples] == [0] * 4 + [1] * 4 + [2] * 4
    assert all(s["prompt"].endswith("<|im_start|>assistant\n") and s["reference"] for s in samples)
    assert (run / "plots" / "perplexity_vs_round.png").stat().st_size > 0
    assert (run / "plots" / "rouge_l_vs_bytes.png").stat().st_size > 0

    reloaded = subprocess.run([sys.executable, "-c", RELOAD, str(run)], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    again = json.loads(reloaded.stdout.strip().splitlines()[-1])
    assert again["metrics"]["nll"] == pytest.approx(summary["nll_final"], rel=1e-5)
    assert again["generations"] == [s["generation"] for s in samples if s["round"] == 2]

    answered = subprocess.run([sys.executable, "-m", "simulations.cli", "generate", "--adapter",
                               str(run / "adapter"), "--prompt", "Define the word 'dog'.", "--json",
                               "--max-new-tokens", "4"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert answered.returncode == 0, answered.stderr[-3000:]
    assert json.loads(answered.stdout.strip().splitlines()[-1])["prompt"] == "Define the word 'dog'."


def test_sft_under_secure_aggregation_with_signed_keys_is_exact_with_n_minus_t_dropouts(
        tmp_path: Path, tiny_causal_lm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 signing nodes (k = 4, t = 3, so the default least threshold of a signing node holds), 2 of them gone after
    sharing their keys: the 3 survivors confirm, unmask, and the coordinator's sum equals theirs exactly."""
    from client.setup_ledger import MAGIC, RECORD
    from server.node_keys import generate_node_keys
    from simulations.testing.audit import audited_sums_are_exact

    one_setup = len(MAGIC) + RECORD.size + 32  # a ledger holding one setup

    audit = tmp_path / "audit"
    monkeypatch.setenv("FEDSQUEEZE_SECAGG_AUDIT_DIR", str(audit))
    generate_node_keys(tmp_path / "node-keys", 5)  # as fedsqueeze certs DIR --nodes 5 writes them
    summary = simulate(_tiny_sft(tiny_causal_lm, secagg=True, **{"num-server-rounds": 1, "num-clients": 5}),
                       out_dir=tmp_path / "run", max_parallel=ACTORS, node_identities=tmp_path / "node-keys",
                       fail_partitions=frozenset({1, 3}), fail_at="train.secagg_mask")

    row = _rows(tmp_path / "run", "metrics.jsonl")[0]
    assert row["applied"] and row["secagg"]["aborted"] is None and row["secagg"]["signed"]
    assert len(row["secagg"]["survivors"]) == 3 and len(row["secagg"]["dropped"]) == 2
    assert sorted(audited_sums_are_exact(audit, 1)) == row["secagg"]["survivors"]
    assert summary["secagg"] and summary["perplexity_final"] < summary["perplexity_base"]
    assert sum("injected failure on partition" in p for p in row["problems"]) == 2
    survivors = [c for c in row["clients"] if c["status"] == "ok"]  # quantised masked sums: under fp32's size
    assert len(survivors) == 3 and all(c["bytes_up"] < 0.7 * c["dense_fp32_bytes_up"] for c in survivors)
    # Nothing about one client's own update in the clear: no loss, norm, clip count or residual per client.
    assert row["train_loss"] is None
    for client in row["clients"]:
        assert not {"train_loss", "update_norm", "secagg_clipped", "residual_norm", "residual_carried"} & set(client)
    # Each node recorded the setup it advertised keys for, in its state directory (client/setup_ledger.py).
    ledgers = sorted((tmp_path / "run" / "node-state").glob("partition-*/secagg-setups.bin"))
    assert len(ledgers) == 5 and all(ledger.stat().st_size == one_setup for ledger in ledgers)


def test_keys_signed_by_a_node_nobody_pinned_are_refused_in_the_flower_path(tmp_path: Path, tiny_causal_lm: str
                                                                          ) -> None:
    from server.node_keys import generate_node_keys

    pairs = generate_node_keys(tmp_path / "node-keys", 3)
    stranger = generate_node_keys(tmp_path / "elsewhere", 1)[0]  # node 2 signs with a key nobody pinned: the
    pairs[2].public_key.write_text(stranger.public_key.read_text())  # federation's list pins another in its place
    simulate(_tiny_sft(tiny_causal_lm, secagg=True, **{"num-server-rounds": 1}), out_dir=tmp_path / "run",
             max_parallel=ACTORS, node_identities=tmp_path / "node-keys", node_floor="min-threshold=2")  # t = 2 of 3

    row = _rows(tmp_path / "run", "metrics.jsonl")[0]
    assert not row["applied"] and row["secagg"]["aborted"]
    refusals = [p for p in row["problems"] if "signed by a key this node does not trust" in p]
    assert len(refusals) == 2, row["problems"]  # nodes 0 and 1 each refused node 2's keys before sharing


def test_nodes_refuse_a_round_below_their_floor_and_the_coordinator_records_why(tmp_path: Path,
                                                                              tiny_causal_lm: str) -> None:
    """The coordinator switches secure aggregation off; every node's floor demands it."""
    summary = simulate(_tiny_sft(tiny_causal_lm, **{"num-server-rounds": 1}), out_dir=tmp_path / "run",
                       max_parallel=ACTORS, node_floor="secagg=true min-parties=3")
    row = _rows(tmp_path / "run", "metrics.jsonl")[0]
    assert not row["applied"] and row["clients_ok"] == 0 and row["clients_refused"] == 3
    assert {c["status"] for c in row["clients"]} == {"refused"}
    assert all("refused the round: this node trains only for securely aggregated rounds" in p
               for p in row["problems"]), row["problems"]
    assert summary["perplexity_final"] == summary["perplexity_base"]  # nothing trained, nothing lost


def test_sft_resumed_after_a_round_ends_bit_identical_to_the_uninterrupted_run(
        tmp_path: Path, compeft_run: tuple[dict, dict, Path]) -> None:
    from safetensors.torch import load_file

    config, whole, whole_dir = compeft_run  # the uninterrupted run: error-feedback residuals, FedAdam's moments
    simulate({**config, "num-server-rounds": 1}, out_dir=tmp_path / "cut", max_parallel=ACTORS)
    manifest = json.loads((tmp_path / "cut" / "checkpoint" / "checkpoint.json").read_text())
    assert manifest["optimizer_steps"] == 1 and manifest["optimizer_moments"] == ["m", "v"]
    with (tmp_path / "cut" / "samples.jsonl").open("a") as out:  # a line of a round that never checkpointed
        out.write('{"round": 2, "generation": "lost"}\n')
    resumed = simulate({**config, "resume": True}, out_dir=tmp_path / "cut", max_parallel=ACTORS)

    assert whole["server_optimizer"] == "fedadam" and whole["nll_final"] < whole["nll_base"]
    # Two simulations, other node ids each: the same partitions sampled in every round (nodes ordered by partition).
    sampled = [[sorted(c["partition_id"] for c in row["clients"]) for row in _rows(run, "metrics.jsonl")]
               for run in (whole_dir, tmp_path / "cut")]
    assert sampled[0] == sampled[1] and all(len(s) == 2 for s in sampled[0])
    assert resumed["nll_final"] == whole["nll_final"] and resumed["rouge_l_base"] == whole["rouge_l_base"]
    expected = load_file(whole_dir / "adapter" / "adapter_model.safetensors")
    got = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)
    assert _rows(tmp_path / "cut", "samples.jsonl") == _rows(whole_dir, "samples.jsonl")


def test_fedprox_pulls_local_training_towards_the_global_state(tiny_causal_lm: str) -> None:
    from client.task.build import build_task, load_splits
    from client.task.loop import train_locally
    from server.run_config import resolve
    from strategies.fedavg import subtract
    from strategies.norms import l2_norm

    spec = resolve(_tiny_sft(tiny_causal_lm)).task
    train, _ = load_splits(spec)
    moved = {}
    for mu in (0.0, 50.0):
        task = build_task(spec, train)
        start = task.trainable_state()
        train_locally(task, train.dataset.select(range(16)), steps=4, batch_size=4, lr=1e-2, seed=3, prox_mu=mu)
        moved[mu] = l2_norm(subtract(task.trainable_state(), start))
    assert 0 < moved[50.0] < 0.8 * moved[0.0]


def test_a_vera_adapter_under_secure_aggregation_learns_and_reloads_in_a_fresh_process(
        tmp_path: Path, tiny_causal_lm: str) -> None:
    summary = simulate(_tiny_sft(tiny_causal_lm, adapter="vera", secagg=True,
                                 **{"lora-r": 16, "lr": 5e-2, "num-server-rounds": 2}), out_dir=tmp_path,
                       max_parallel=ACTORS)

    rows = _rows(tmp_path, "metrics.jsonl")
    assert all(r["applied"] and len(r["secagg"]["survivors"]) == 3 for r in rows)
    assert summary["task"]["adapter"] == "vera" and summary["nll_final"] < summary["nll_base"]
    reloaded = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    assert json.loads(reloaded.stdout.strip().splitlines()[-1])["metrics"]["nll"] == pytest.approx(
        summary["nll_final"], rel=1e-5)
