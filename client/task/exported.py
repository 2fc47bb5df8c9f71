"""Use a run's exported adapter: load it onto its base model in standard PEFT fashion and answer prompts."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from client.task.chat_format import ensure_chat_template
from client.task.kinds.sft import greedy_generate
from client.task.models import load_causal_lm, load_tokenizer


def load_adapter(adapter_dir: Path, model: str = "") -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model (``model``, else the adapter config's ``base_model_name_or_path``) with the adapter in
    ``adapter_dir`` loaded by ``PeftModel.from_pretrained``, and the tokenizer saved beside the adapter (else the
    base's). FileNotFoundError when ``adapter_dir`` holds no PEFT adapter."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"'{adapter_dir}' holds no PEFT adapter (no adapter_config.json)")
    base_name = model or str(json.loads(config_path.read_text())["base_model_name_or_path"])
    base = load_causal_lm(base_name)
    if (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
        tokenizer.padding_side = "left"
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    else:
        tokenizer = load_tokenizer(base_name)
    ensure_chat_template(tokenizer)
    return PeftModel.from_pretrained(base, str(adapter_dir)), tokenizer


def answer(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
           max_new_tokens: int = 64, system: str = "") -> list[str]:
    """Greedy answers to each prompt as one user turn (after ``system`` when given), through the chat template."""
    prompt_ids = []
    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids.append(tokenizer(text, add_special_tokens=False).input_ids)
    device = next(model.parameters()).device
    return greedy_generate(model, tokenizer, prompt_ids, max_new_tokens, device)
