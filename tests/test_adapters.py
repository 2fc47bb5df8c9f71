"""Every PEFT adapter family on a tiny causal LM through the real task code: what trains (seeded frozen bases are
never part of the update), its update through every codec and through secure aggregation's encoding, and the
exported adapter reloaded by ``PeftModel.from_pretrained``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.task.adapters import ADAPTERS
from client.task.build import build_task, load_splits
from client.task.loop import train_locally
from server.run_config import resolve
from strategies.codecs.registry import codec_settings
from strategies.fedavg import apply_update
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import SecureEncoding, encode_input, flatten, mean_update

CODECS = {"dense": codec_settings("dense"), "compeft": codec_settings("compeft", density=0.3),
          "ferret": codec_settings("ferret", dim=16, block_size=256)}
SEEDED_FROZEN = ("vera_A", "vera_B", "randlora_A", "randlora_B", "shira_indices")


def _spec(model: str, adapter: str):
    return resolve({"preset": "sft", "model": model, "per-topic": 8, "heldout": 8, "max-length": 48,
                    "local-steps": 2, "batch-size": 4, "lr": 1e-2, "eval-samples": 1, "max-new-tokens": 4,
                    "adapter": adapter}).task


def _logits(task, tokens: torch.Tensor) -> torch.Tensor:
    task.model.eval()
    with torch.no_grad():
        return task.model(input_ids=tokens).logits


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_each_adapter_trains_codes_aggregates_and_exports(adapter: str, tiny_causal_lm: str, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = _spec(tiny_causal_lm, adapter)
    train, _ = load_splits(spec)
    task = build_task(spec, train)
    layout = task.trainable_shapes()
    assert layout and not any(frozen in name for name in layout for frozen in SEEDED_FROZEN)
    start = task.trainable_state()
    train_locally(task, train.dataset.select(range(8)), steps=2, batch_size=4, lr=1e-2, seed=1)
    delta = task.trainable_delta(start)
    assert any(t.abs().sum() > 0 for t in delta.values()), "the adapter trained"
    tokens = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    trained = _logits(task, tokens)

    fresh = build_task(spec, train)  # another party: the same seed gives the same adapter and seeded bases
    assert all(torch.equal(fresh.trainable_state()[n], start[n]) for n in start)
    for name, settings in CODECS.items():
        payload = settings.encode(delta, round_id=1, seed=7)
        decoded = settings.impl.decode(payload, expected_round=1, expected_layout=layout, expected_seed=7)
        fresh.load_trainable_state(apply_update(start, decoded))
        if name == "dense":  # lossless: the other party's model is the trained one
            assert torch.equal(_logits(fresh, tokens), trained)
        else:
            assert not torch.equal(_logits(fresh, tokens), _logits(build_task(spec, train), tokens))

    encoding = SecureEncoding(settings=codec_settings("dense"), quantizer=Quantizer(0.05, 16), parties=1,
                              layout=dict(layout))
    words = encode_input(encoding, delta, np.random.default_rng(0)).words
    mean = mean_update(encoding, words, 1)
    assert np.abs(flatten(mean, layout) - np.clip(flatten(delta, layout), -0.05, 0.05)).max() <= \
        encoding.quantizer.step

    exported = task.save(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    reloaded = PeftModel.from_pretrained(base, str(exported)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=tokens).logits, trained, rtol=0, atol=1e-5)


def test_an_unknown_adapter_is_named() -> None:
    from server.run_config import ConfigError

    with pytest.raises(ConfigError, match="adapter 'ia3' is not one of lora, dora"):
        resolve({"adapter": "ia3"})
