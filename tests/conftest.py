"""Shared test settings: offline, quiet, and a per-session model cache."""

import os

os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (chat template, <|im_end|> as EOS and pad), loaded once."""
    from client.task.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory, smollm_tokenizer) -> str:
    """A local model directory: a two-layer Llama made from a config (seeded), with SmolLM2's tokenizer and chat
    template, for fast SFT runs through the real loading code."""
    from simulations.testing.tiny_model import write_tiny_causal_lm

    return str(write_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"), smollm_tokenizer))
