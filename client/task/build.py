"""Build a task from a TaskSpec: the base model (with its seeded adapter, or fully trainable), its tokenizer and
its kind's head, on the spec's device."""

from __future__ import annotations

import importlib.util

import torch
from transformers import PreTrainedTokenizerBase

from client.task.adapters import wrap_with_adapter
from client.task.data import TaskData
from client.task.kinds.base import Task
from client.task.kinds.registry import check_spec, kind_of
from client.task.models import Quantized, load_tokenizer
from client.task.precision import resolve_precision
from client.task.spec import TaskSpec

__all__ = ["Task", "TaskData", "base_weight_dtype", "build_task", "check_quantization", "keep_frozen_in",
           "load_splits", "resolve_device"]  # Task and TaskData: where callers that build tasks look for them


def load_splits(spec: TaskSpec, tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[TaskData, TaskData]:
    """The (train, held-out) split every party derives identically from the spec, as its kind prepares it."""
    return kind_of(check_spec(spec).kind).load_splits(spec, tokenizer)


def base_weight_dtype(spec: TaskSpec, device: torch.device) -> torch.dtype:
    """The dtype the frozen base weights are kept in: bf16 for a LoRA task that trains on CUDA in bf16 (autocast
    casts them to bf16 for every matmul anyway, so keeping them so halves their memory and traffic), else fp32.

    What trains stays fp32 (and so do AdamW's state and the update). The CPU keeps fp32 weights: its bf16 path is
    autocast alone, and the server and the clients on CPU must compute as before.
    """
    if spec.trainable == "lora" and device.type == "cuda" and resolve_precision(spec.precision, device) == "bf16":
        return torch.bfloat16
    return torch.float32


def keep_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast the floating-point parameters that do not train to ``dtype`` and those that train to fp32, in place
    (buffers such as rotary frequencies are left alone; quantised integer weights too). Returns how many
    parameters changed dtype."""
    changed = 0
    for parameter in model.parameters():
        if not parameter.is_floating_point():
            continue
        wanted = torch.float32 if parameter.requires_grad else dtype
        if parameter.dtype != wanted:
            parameter.data = parameter.data.to(wanted)
            changed += 1
    return changed


def check_quantization(quantization: str, device: torch.device) -> None:
    """Raise ValueError naming what is missing when ``quantization`` cannot run here: bitsandbytes quantises
    only on CUDA and must be importable."""
    if quantization == "none":
        return
    if device.type != "cuda":
        raise ValueError(f"quantization '{quantization}' needs a CUDA device, but this task runs on '{device}' "
                         "(set device=cuda or quantization=none)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"quantization '{quantization}' needs the bitsandbytes package, which is not installed "
                         "(pip install bitsandbytes, or set quantization=none)")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA request is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available on this node")
    return device


def build_task(spec: TaskSpec, train: TaskData) -> Task:
    """Load the base model of the spec's kind, add the seeded LoRA adapter (unless every parameter trains), and
    set up the kind's head; ``train`` is the training split (a classifier's label names come from it).

    On CUDA in bf16 the frozen base is kept in bf16 (or loaded 8/4-bit with ``spec.quantization``) while what
    trains stays fp32; on the CPU every weight is fp32.
    """
    kind = kind_of(check_spec(spec).kind)
    device = resolve_device(spec.device)
    check_quantization(spec.quantization, device)
    frozen_dtype = base_weight_dtype(spec, device)
    quantized = Quantized(spec.quantization, frozen_dtype, device) if spec.quantization != "none" else None
    tokenizer = load_tokenizer(spec.model)
    base = kind.load_base(spec, train, quantized)
    model = (wrap_with_adapter(base, spec.adapter, spec.lora, seed=spec.seed, modules_to_save=kind.modules_to_save())
             if spec.trainable == "lora" else base)
    head = kind.make_head(spec, tokenizer, train, device)
    if frozen_dtype != torch.float32 or quantized is not None:
        keep_frozen_in(model, frozen_dtype)  # before the move: half the bytes cross to the device
    if quantized is None:
        model.to(device)  # a quantised base was loaded onto its device; bitsandbytes weights stay put
    return Task(spec, model, tokenizer, device, kind, head)
