"""The privacy attacks: their metrics, and that they have teeth against undefended updates (real models)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from simulations.attacks import defences, metrics, token_recovery
from simulations.attacks.federated import defended_mean
from simulations.attacks.harness import AttackConfig, run
from strategies.norms import l2_norm


def test_metrics_on_known_cases() -> None:
    score = metrics.token_set_score({1, 2, 3, 4}, {2, 3, 5})
    assert (score.precision, score.recall) == (0.5, pytest.approx(2 / 3))
    assert metrics.rouge_n(list("abcd"), list("abcd"), 2) == 1.0
    assert metrics.rouge_n(list("abxy"), list("abcd"), 1) == 0.5
    assert metrics.rouge_n(list("ba"), list("ab"), 2) == 0.0
    members, others = np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0])
    assert metrics.auc(members, others) == 1.0 and metrics.auc(others, members) == 0.0
    rng = np.random.default_rng(0)
    assert abs(metrics.auc(rng.normal(size=4000), rng.normal(size=4000)) - 0.5) < 0.03
    assert metrics.tpr_at_fpr(members, others, 0.0) == 1.0


def test_predict_cuts_at_the_widest_gap_and_takes_moved_rows() -> None:
    scores = np.r_[np.full(1000, -0.8) + np.linspace(0, 0.1, 1000), [0.3, 0.5, 0.4]]
    assert token_recovery.predict(scores) == {1000, 1001, 1002}
    assert token_recovery.predict(scores, 2) == {1001, 1002}
    untied = token_recovery.untied_scores(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    assert token_recovery.predict(untied) == {1, 3}


def test_predict_cuts_where_the_text_meets_the_bulk_not_inside_the_text() -> None:
    # A long text: 60 tokens spread from 9 to 15 robust deviations above the bulk, and one far beyond them. The
    # widest gap lies between that one and the rest; the cut must still come down to the bulk.
    rng = np.random.default_rng(0)
    bulk = rng.normal(size=20_000)
    scores = np.r_[bulk, np.linspace(9, 15, 60), [60.0]]
    assert token_recovery.predict(scores) == set(range(20_000, 20_061))


def test_defences_change_what_is_seen_and_refuse_unsound_combinations() -> None:
    generator = torch.Generator().manual_seed(0)
    victim = {"w": torch.randn(256, 64, generator=generator)}
    others = defences.sums_of_others([{"w": torch.randn(256, 64, generator=generator)} for _ in range(7)], [1, 7])
    seen, nbytes = defences.observe("none", victim, others, round_id=1, dp_clip=1.0, generator=generator)
    assert torch.equal(seen["w"], victim["w"]) and nbytes == 4 * victim["w"].numel()
    seen, nbytes = defences.observe("compeft-0.05", victim, others, round_id=1, dp_clip=1.0, generator=generator)
    assert (seen["w"] != 0).float().mean() == pytest.approx(0.05, abs=0.01) and nbytes < 4 * victim["w"].numel() / 10
    seen, _ = defences.observe("secagg-8", victim, others, round_id=1, dp_clip=1.0, generator=generator)
    torch.testing.assert_close(seen["w"], (victim["w"] + others[7]["w"]) / 8)
    seen, nbytes = defences.observe("dp-1", victim, others, round_id=1, dp_clip=1.0, generator=generator)
    noise = seen["w"] - victim["w"] / l2_norm(victim)  # clipped to norm 1, then N(0, (z * clip)^2) per entry
    assert nbytes == 4 * victim["w"].numel() and float(noise.std()) == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="securely aggregated"):
        defences.observe("compeft-0.05+secagg-8", victim, others, round_id=1, dp_clip=1.0, generator=generator)
    with pytest.raises(ValueError, match="unknown defence"):
        defences.parse("zip-3")


def test_ferret_under_secure_aggregation_sees_the_projection_of_the_round_sum() -> None:
    generator = torch.Generator().manual_seed(1)
    victim = {"w": torch.randn(300, 50, generator=generator)}
    others = defences.sums_of_others([{"w": torch.randn(300, 50, generator=generator)} for _ in range(7)], [7])
    seen, nbytes = defences.observe("ferret-64+secagg-8", victim, others, round_id=3, dp_clip=1.0,
                                    generator=generator)
    alone, alone_bytes = defences.observe("ferret-64", victim, others, round_id=3, dp_clip=1.0, generator=generator)
    rest, _ = defences.observe("ferret-64", others[7], others, round_id=3, dp_clip=1.0, generator=generator)
    torch.testing.assert_close(seen["w"], (alone["w"] + rest["w"]) / 8, rtol=1e-4, atol=1e-5)
    assert nbytes < alone_bytes  # ring words of the coefficients, not fp32
    with pytest.raises(ValueError, match="DP goes before Ferret"):
        defences.observe("ferret-64+dp-1+secagg-8", victim, others, round_id=3, dp_clip=1.0, generator=generator)


def test_the_federation_mean_under_codec_and_dp_defences() -> None:
    generator = torch.Generator().manual_seed(2)
    updates = [{"w": torch.randn(128, 64, generator=generator)} for _ in range(4)]
    dense_bytes = 4 * 128 * 64

    def mean_under(name: str) -> tuple[dict[str, torch.Tensor], int]:
        return defended_mean(name, 1.0, 1.0, generator)(updates, 1)

    plain, nbytes = mean_under("none")
    torch.testing.assert_close(plain["w"], sum(u["w"] for u in updates) / 4)
    assert nbytes == dense_bytes
    sparse, nbytes = mean_under("compeft-0.05")  # four clients' 5 % supports
    assert nbytes < dense_bytes / 10 and 0 < float((sparse["w"] != 0).float().mean()) <= 0.21
    projected, nbytes = mean_under("ferret-64")
    assert nbytes < dense_bytes / 10 and not torch.allclose(projected["w"], plain["w"], atol=0.1)
    noised, nbytes = mean_under("dp-1")  # each update clipped to norm 1 and given N(0, 1) noise: the mean's is 1/2
    clipped = sum(u["w"] / l2_norm(u) for u in updates) / 4
    assert nbytes == dense_bytes and float((noised["w"] - clipped).std()) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(("settings", "named"), [
    ({"attacks": "token,canaries"}, "unknown attack 'canaries'"),
    ({"canary-defences": "none,secagg"}, "unknown defence 'secagg'"),
    ({"canary-clients": "9"}, "canary-clients must be 2..7"),
    ({"canary-repeats": "32,0"}, "canary-repeats must be counts of at least 1"),
    ({"canary-candidates": "4"}, "canary-candidates must be at least 8"),
    ({"canary-shadows": "0"}, "canary-shadows must be at least 1"),
])
def test_bad_attack_settings_are_named_before_anything_runs(settings: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        AttackConfig().with_overrides(settings)


@pytest.mark.slow
def test_quick_harness_writes_every_attack_against_every_defence(tmp_path: Path) -> None:
    # The quick grid with the defences the claims below rest on (none; secure aggregation over 8 clients): the
    # codec and DP defences of `fedsqueeze attack --quick` are the tests above (what the coordinator sees of one
    # update, and the federation's mean under each).
    config = AttackConfig.quick().with_overrides({"defences": "none,secagg-8"})
    result = run(tmp_path, config)
    rows = result["rows"]
    saved = json.loads((tmp_path / "attacks.json").read_text())
    assert len(saved["rows"]) == len(rows)
    for attack in ("token-set (tied", "token-set (untied", "text reconstruction", "text recovery by span",
                   "PII canaries in the final model", "PII canaries from", "membership inference (offline",
                   "membership inference (LiRA"):
        assert any(r["attack"].startswith(attack) for r in rows), attack
    # Span checks recover a FedSGD batch's text exactly, far above the template-plus-greedy baseline; AdamW steps
    # of the real client update leave nothing to check.
    span = {(r["attack"].rsplit(" ", 1)[-1].rstrip(")"), r["threat_model"].split(": ", 1)[1].split(":")[0]): r
            for r in rows if r["attack"].startswith("text recovery by span")}
    fedsgd = span[("2", "FedSGD")]
    assert fedsgd["metrics"]["exact"][0] == 1.0 and fedsgd["metrics"]["rouge2"][0] == 1.0
    assert fedsgd["baseline"]["rouge2"][0] < 0.9 and fedsgd["baseline"]["exact"][0] == 0.0
    assert span[("2", "the real client update")]["metrics"]["exact"][0] == 0.0
    tied = {r["defence"]: r for r in rows if r["attack"].startswith("token-set (tied")}
    assert set(tied) == set(config.defences)
    untied = next(r for r in rows if r["attack"].startswith("token-set (untied") and r["defence"] == "none")
    # The attacks have teeth without a defence, each beside its baseline measured in the same run.
    assert untied["metrics"]["token_f1"][0] >= 0.95
    assert tied["none"]["metrics"]["token_f1_count_given"][0] > tied["none"]["baseline"]["token_f1"][0]
    assert tied["none"]["metrics"]["token_f1"][0] > tied["none"]["baseline"]["token_f1"][0]
    assert tied["none"]["metrics"]["token_f1"][0] >= 0.9
    for kind in ("LoRA", "full-parameter"):
        recon = {r["defence"]: r for r in rows if r["attack"].startswith(f"text reconstruction ({kind}")}
        assert recon["none"]["metrics"]["rouge1"][0] > recon["none"]["baseline"]["rouge1"][0] + 0.05, kind
    # Every defence row is measured: secure aggregation over 8 clients blunts token recovery.
    assert tied["secagg-8"]["metrics"]["token_f1"][0] < tied["none"]["metrics"]["token_f1"][0]
    mia = [r for r in rows if r["attack"].startswith("membership inference (LiRA")]
    assert {r["defence"] for r in mia} == set(config.defences)
    assert all(0.0 <= r["metrics"]["mia_auc"][0] <= 1.0 and r["utility"] is not None for r in mia)
    # PII canaries: the coordinator, applying client 0's own update, finds its canary far more likely than
    # never-planted ones; the secure aggregate of 4 clients gives it away less.
    final = {r["defence"]: r for r in rows if r["attack"].startswith("PII canaries in the final model")}
    view = {r["defence"]: r for r in rows if r["attack"].startswith("PII canaries from")}
    assert set(final) == set(view) == set(config.canary_defences)
    bits = f"exposure_bits_x{config.canary_repeats[0]}"
    assert view["none"]["metrics"][bits][0] > view["none"]["baseline"][bits][0] + 3
    assert view["secagg-4"]["metrics"][bits][0] < view["none"]["metrics"][bits][0] - 1
    sft_mia = [r for r in rows if r["attack"].startswith("membership inference (offline")]
    assert {r["defence"] for r in sft_mia} == set(config.canary_defences)
    assert all(0 <= r["metrics"]["mia_auc"][0] <= 1 for r in sft_mia)
    assert all(r["utility"] > 1 for r in sft_mia + list(final.values()))  # held-out perplexity
    table = (tmp_path / "attacks.md").read_text()
    assert "| none |" in table and "secagg-8" in table
    assert any(p.suffix == ".png" for p in (tmp_path / "plots").iterdir())
