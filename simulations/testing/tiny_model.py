"""A tiny causal LM made from a config: a seeded two-layer Llama with SmolLM2's tokenizer and chat template, written
as a local model directory. Tests and the deployment load benchmark use it to run instruction tuning through the
real loading code in seconds, and to fit dozens of nodes on one machine."""

from __future__ import annotations

from pathlib import Path


def write_tiny_causal_lm(directory: Path, tokenizer: object | None = None) -> Path:
    """Write the tiny model (and ``tokenizer``, default SmolLM2-135M-Instruct's) to ``directory``; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from client.task.models import load_tokenizer

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
