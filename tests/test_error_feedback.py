"""Error feedback on the client: the residual lives in Flower's node state and nothing is lost across rounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from client import node_state
from client.handlers import _codec_encoder, _encode_with_feedback
from strategies.codecs.registry import CodecSettings, codec_settings, decode_update

SETTINGS = codec_settings("compeft", density=0.05)


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _delta(round_id: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(round_id)
    return {"a.lora_A.weight": torch.randn(8, 64, generator=generator) * 1e-3,
            "a.lora_B.weight": torch.randn(64, 8, generator=generator) * 1e-3}


def test_sent_plus_residual_equals_everything_trained() -> None:
    context = _context()
    layout = {name: tuple(t.shape) for name, t in _delta(0).items()}
    sent_total = {name: torch.zeros(shape) for name, shape in layout.items()}
    delta_total = {name: torch.zeros(shape) for name, shape in layout.items()}
    for round_id in range(1, 6):
        payload, metrics = _encode_with_feedback(_delta(round_id), SETTINGS, True, context,
                                                 _codec_encoder(SETTINGS, round_id, None))
        assert metrics["residual-carried"] == float(round_id > 1)
        sent = decode_update("compeft", payload, expected_round=round_id, expected_layout=layout)
        for name in layout:
            sent_total[name] += sent[name]
            delta_total[name] += _delta(round_id)[name]
    residual = node_state.load_tensors(context.state, node_state.RESIDUAL)
    assert residual is not None
    for name in layout:
        torch.testing.assert_close(sent_total[name] + residual[name], delta_total[name], rtol=1e-5, atol=1e-7)
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in residual.values()))
    assert abs(float(norm) - metrics["residual-norm"]) < 1e-9


def test_without_feedback_nothing_is_kept_and_dense_fp32_needs_none() -> None:
    context = _context()
    _encode_with_feedback(_delta(1), SETTINGS, True, context, _codec_encoder(SETTINGS, 1, None))
    assert node_state.RESIDUAL in context.state
    _, metrics = _encode_with_feedback(_delta(2), SETTINGS, False, context, _codec_encoder(SETTINGS, 2, None))
    assert metrics == {} and node_state.RESIDUAL not in context.state
    _, metrics = _encode_with_feedback(_delta(3), CodecSettings(), True, context,
                                       _codec_encoder(CodecSettings(), 3, None))
    assert metrics == {} and node_state.RESIDUAL not in context.state


def test_a_residual_for_other_tensors_is_replaced() -> None:
    context = _context()
    node_state.save_tensors(context.state, node_state.RESIDUAL, {"other.weight": torch.ones(3)})
    _, metrics = _encode_with_feedback(_delta(1), SETTINGS, True, context, _codec_encoder(SETTINGS, 1, None))
    assert metrics["residual-carried"] == 0.0
    assert set(node_state.load_tensors(context.state, node_state.RESIDUAL)) == set(_delta(1))


def test_residuals_on_disk_start_a_round_run_again_from_where_it_started(tmp_path: Path) -> None:
    """client/residual_store.py: round r starts from the newest residual before r (a round run again after a
    coordinator crash starts where it did the first time), two are kept, later timelines are dropped, files are
    private, and the folder is per node, per federation; an id that is not hex never becomes a path."""
    from client import residual_store
    from client.state_dir import STATE_DIR_ENV

    directory = residual_store.store_dir({"state-dir": str(tmp_path / "node")}, "ab12", partition_id=0)
    assert directory == tmp_path / "node" / "ab12"
    assert residual_store.store_dir({}, "ab12", 3, environ={STATE_DIR_ENV: str(tmp_path)}) == (
        tmp_path / "partition-3" / "ab12")
    assert residual_store.store_dir({}, "ab12", 0, environ={}) is None and residual_store.store_dir({}, "", 0) is None
    with pytest.raises(ValueError, match="not lower-case hex"):
        residual_store.store_dir({"state-dir": str(tmp_path)}, "../../etc", 0)
    assert residual_store.load_before(directory, 1) is None
    for round_id in (1, 3, 5):
        residual_store.save(directory, round_id, {"w": torch.full((2,), float(round_id))})
    assert sorted(p.name for p in directory.iterdir()) == ["residual-000003.safetensors", "residual-000005.safetensors"]
    assert residual_store.load_before(directory, 6)["w"].tolist() == [5.0, 5.0]
    assert residual_store.load_before(directory, 5)["w"].tolist() == [3.0, 3.0]  # round 5 again: from round 3's
    residual_store.save(directory, 4, {"w": torch.full((2,), 4.0)})  # the checkpointed timeline went another way
    assert sorted(p.name for p in directory.iterdir()) == ["residual-000003.safetensors", "residual-000004.safetensors"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in directory.iterdir())
    for age, federation in enumerate(("c1", "c2", "c3")):  # newer federations: only the last three are kept
        residual_store.save(directory.parent / federation, 1, {"w": torch.zeros(2)})
        os.utime(directory.parent / federation, (1e9 + age, 1e9 + age))
    os.utime(directory, (1e8, 1e8))
    residual_store.save(directory.parent / "c4", 1, {"w": torch.zeros(2)})
    assert sorted(d.name for d in directory.parent.iterdir()) == ["c2", "c3", "c4"]
