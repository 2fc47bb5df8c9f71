"""Load base models and tokenizers (adapters: client/task/adapters.py)."""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from client.task.model_sources import ModelSource, dequantised_cache_dir, resolve_model

log = logging.getLogger(__name__)


def _strip_gguf_quantisation(model: nn.Module) -> None:
    # A GGUF-loaded model keeps a quantizer that refuses save_pretrained; the weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _dequantise_to_cache(source: ModelSource) -> Path:
    """Dequantise a GGUF model once and cache it as an fp32 HF directory (file-locked)."""
    target = dequantised_cache_dir(source)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        log.info("dequantising %s once (cached at %s)", source.gguf_file, target)
        model = AutoModelForCausalLM.from_pretrained(
            source.directory, gguf_file=source.gguf_file, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
        _strip_gguf_quantisation(model)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """Tokenizer for a model spec, padding on the left (last-token scoring needs it)."""
    source = resolve_model(spec)
    directory = _dequantise_to_cache(source) if source.gguf_file else source.directory
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class Quantized:
    """How to load a base through bitsandbytes: ``8bit`` or ``4bit`` (NF4, double quantisation), the dtype of
    the modules it leaves unquantised (and of 4-bit compute), and the CUDA device every weight goes to."""

    bits: str
    dtype: torch.dtype
    device: torch.device

    def loading_options(self) -> dict[str, object]:
        """``from_pretrained`` keyword arguments: the BitsAndBytesConfig, the dtype and a one-device map."""
        if self.bits == "8bit":
            config = BitsAndBytesConfig(load_in_8bit=True)
        elif self.bits == "4bit":
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                        bnb_4bit_compute_dtype=self.dtype)
        else:
            raise ValueError(f"quantization '{self.bits}' is not one of 8bit, 4bit")
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        return {"quantization_config": config, "dtype": self.dtype, "device_map": {"": index}}


def load_causal_lm(spec: str, quantized: Quantized | None = None) -> nn.Module:
    """A causal LM from a bundled name, a local directory or GGUF file, or a hub id: fp32 on the CPU, or with
    its linear layers quantised by bitsandbytes on ``quantized.device``."""
    source = resolve_model(spec)
    directory = _dequantise_to_cache(source) if source.gguf_file else source.directory
    if quantized is not None:
        return AutoModelForCausalLM.from_pretrained(str(directory), **quantized.loading_options())
    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)


class MeanPoolClassifier(nn.Module):
    """A text encoder with mean pooling over real tokens and a linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int, seed: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        generator = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.02, generator=generator)
            self.head.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits of shape [batch, num_labels]."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def load_encoder_classifier(spec: str, num_labels: int, seed: int, quantized: Quantized | None = None
                            ) -> MeanPoolClassifier:
    """A mean-pooling classifier on an HF encoder; the head is seeded so every party builds the same one.

    With ``quantized`` the encoder's linear layers are quantised on its device; the fp32 head joins them there.
    """
    source = resolve_model(spec)
    if source.gguf_file:
        raise ValueError(f"model '{spec}' is a GGUF causal LM, not an encoder")
    if quantized is not None:
        encoder = AutoModel.from_pretrained(str(source.directory), **quantized.loading_options())
        classifier = MeanPoolClassifier(encoder, num_labels, seed)
        classifier.head.to(quantized.device)
        return classifier
    encoder = AutoModel.from_pretrained(str(source.directory), dtype=torch.float32)
    return MeanPoolClassifier(encoder, num_labels, seed)
