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
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    directory = tmp_path_factory.mktemp("tiny-causal-lm")
    config = LlamaConfig(vocab_size=len(smollm_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=smollm_tokenizer.eos_token_id,
                         pad_token_id=smollm_tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    smollm_tokenizer.save_pretrained(directory)
    return str(directory)
