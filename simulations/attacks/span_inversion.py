"""Exact text recovery from a causal LM's update by span checks (the DAGER family, Petrov et al., NeurIPS 2024;
written from the paper's idea, not its code).

A linear layer's weight gradient is ``sum_t delta_t x_t^T``: its rows lie in the span of the layer's inputs
``x_t``, one per position of the batch. When the batch has fewer positions than the layer has input dimensions,
that span is a proper subspace, and a candidate input can be *checked*: it belongs to the batch only if it lies
in the span. In a Llama-style decoder:

- layer 0's attention projections see ``RMSNorm(embedding(token))``: no position enters before the projection
  (rotary embeddings come after it), so every vocabulary token can be checked on its own, which gives the batch's
  token set;
- layer 1's projections see the output of layer 0 at each position, which depends on the whole prefix (causal
  attention): a candidate prefix can be checked one position at a time, so sequences are grown token by token from
  the chat template's first token, keeping every extension whose new position lies in layer 1's span (a beam, so
  a batch's sequences that share a prefix branch where they differ).

The attacker knows what a curious coordinator knows: the model the client started from and the client's update.
It needs the update of the query/key/value projections of layers 0 and 1; one step of SGD (FedSGD) keeps the
update in the gradient's span exactly. What it cannot use: AdamW's update is the gradient divided entrywise by its
running RMS, which leaves the span (the harness measures how much survives several steps), and a LoRA adapter's
``A`` update has rank at most r, so it spans an r-dimensional part of the inputs' span only: a true input is in it
only when the batch has at most r distinct inputs (the ``B`` update sees inputs through ``A``, an r-dimensional
view, before any training has moved ``B`` from zero the ``A`` update is zero).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

PROJECTIONS = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class SpanSettings:
    """Thresholds of the span checks: a singular value counts when above ``noise_factor`` x the rounding noise
    floor and ``rank_rtol`` x the largest (``row_space``); an input
    belongs to the span when its relative distance to it is below ``token_tol`` (layer 0) or ``prefix_tol``
    (layer 1); ``beam`` prefixes are kept per step, ``max_len`` tokens per sequence at most."""

    rank_rtol: float = 1e-7
    noise_factor: float = 8.0
    token_tol: float = 1e-2
    prefix_tol: float = 1e-3
    beam: int = 64
    max_len: int = 160
    max_candidates: int = 2048  # a token set larger than this means the span held (nearly) everything: no search
    chunk: int = 256  # candidate prefixes per forward pass


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the input it wanted is captured."""


def layer_update(update: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """The update of layer ``layer``'s query/key/value projections (full weights, or LoRA ``A`` matrices), stacked
    as rows over the layer's input dimension; KeyError when the update has none of them."""
    rows = []
    for name, tensor in update.items():
        if f"layers.{layer}.self_attn." not in name or not any(f".{p}." in name for p in PROJECTIONS):
            continue
        if name.endswith(".weight") and ("lora_A" in name or "lora_" not in name):
            rows.append(tensor.detach().to(torch.float64).reshape(-1, tensor.shape[-1]))
    if not rows:
        raise KeyError(f"the update has no query/key/value projection of layer {layer}")
    return torch.cat(rows)


def row_space(rows: torch.Tensor, settings: SpanSettings) -> torch.Tensor:
    """An orthonormal basis (as rows) of the span of ``rows``: the right singular vectors above the rounding noise.
    The update was computed in float32, so directions the batch never touched still carry singular values of a few
    float32 epsilons; the noise floor is the median of the lower half of the spectrum (all noise when the batch
    spans less than half the space), and a direction counts above ``noise_factor`` x that floor (and above
    ``rank_rtol`` x the largest)."""
    _, singular, vh = torch.linalg.svd(rows, full_matrices=False)
    if singular.numel() == 0 or singular[0] == 0:
        return vh[:0]
    relative = singular / singular[0]
    floor = float(relative[relative.numel() // 2:].median())
    return vh[relative > max(settings.rank_rtol, settings.noise_factor * floor)]


def distances(points: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Each point's distance to the span of ``basis``, relative to its norm (0: inside, 1: orthogonal)."""
    points = points.to(torch.float64)
    residual = points - (points @ basis.T) @ basis
    return residual.norm(dim=-1) / points.norm(dim=-1).clamp_min(1e-300)


def _decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model`` of a Llama-style causal LM, also under a PEFT wrapper)."""
    inner = model
    while not hasattr(inner, "layers"):
        inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner.model
    return inner


def token_inputs(model: nn.Module) -> torch.Tensor:
    """Layer 0's projection input for every vocabulary token: its embedding through the first RMSNorm."""
    decoder = _decoder(model)
    with torch.no_grad():
        return decoder.layers[0].input_layernorm(decoder.embed_tokens.weight)


def recover_tokens(model: nn.Module, update: dict[str, torch.Tensor], settings: SpanSettings = SpanSettings()
                   ) -> tuple[list[int], torch.Tensor, int]:
    """The token ids whose layer-0 input lies in the span of layer 0's update, each token's distance, and the
    span's rank (as large as the input dimension: the batch had too many distinct tokens to check any)."""
    basis = row_space(layer_update(update, 0), settings)
    dist = distances(token_inputs(model), basis)
    return [int(i) for i in torch.nonzero(dist < settings.token_tol).flatten()], dist, basis.shape[0]


def _layer1_input(model: nn.Module, input_ids: torch.Tensor, cache: DynamicCache | None = None
                  ) -> torch.Tensor:
    """Layer 1's projection input at every given position (after ``cache``'s positions, when given), shape
    (batch, positions, width). The forward pass stops there, so only layer 0 runs (and fills ``cache``)."""
    decoder = _decoder(model)
    captured: list[torch.Tensor] = []

    def capture(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach().to(torch.float64))
        raise _Stop

    hook = decoder.layers[1].self_attn.q_proj.register_forward_pre_hook(capture)
    past = cache.get_seq_length() if cache is not None else 0
    positions = torch.arange(past, past + input_ids.shape[1]).expand(input_ids.shape[0], -1)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, position_ids=positions, past_key_values=cache, use_cache=cache is not None)
    except _Stop:
        pass
    finally:
        hook.remove()
    return captured[0]


def prefix_inputs(model: nn.Module, prefixes: torch.Tensor) -> torch.Tensor:
    """Layer 1's projection inputs at every position of each prefix (a batch of equal-length token ids), shape
    (prefixes, positions, width)."""
    return _layer1_input(model, prefixes)


def next_inputs(model: nn.Module, prefix: Sequence[int], candidates: torch.Tensor, chunk: int) -> torch.Tensor:
    """Layer 1's projection input at the position after ``prefix`` for each candidate token: the prefix runs
    through layer 0 once (its keys and values cached), then every candidate as one more position."""
    cache = DynamicCache()
    _layer1_input(model, torch.tensor([list(prefix)]), cache)
    out = []
    for part in candidates.split(chunk):
        grown = copy.deepcopy(cache)
        grown.batch_repeat_interleave(part.numel())
        out.append(_layer1_input(model, part[:, None], grown)[:, -1])
    return torch.cat(out)


def _repeats(point: torch.Tensor, earlier: torch.Tensor, tol: float) -> bool:
    """Whether ``point`` is (within ``tol``, relatively) one of the ``earlier`` positions' inputs: a run of one
    token from the start gives every position the same layer-1 input, which the span always holds."""
    return bool(((earlier - point).norm(dim=-1) < tol * point.norm()).any())


@dataclass
class _Prefix:
    tokens: list[int]
    inputs: torch.Tensor  # layer 1's input at each of its positions
    score: float = 0.0  # summed distance of its grown positions to the span

    def mean_score(self, start: int) -> float:
        return self.score / max(1, len(self.tokens) - start)


def recover_sequences(model: nn.Module, update: dict[str, torch.Tensor], tokens: Sequence[int], start: Sequence[int],
                      settings: SpanSettings = SpanSettings(), end: Sequence[int] = ()) -> list[list[int]]:
    """Sequences grown from ``start`` one token of ``tokens`` at a time, each new position checked against layer
    1's span (and required to add an input no earlier position had); a prefix that no token extends is finished.
    A sequence's last token predicts nothing, so it leaves no trace in the update: every finished sequence is
    completed with the chat template's closing tokens ``end`` (``<|im_end|>`` and a newline for SmolLM2's), from
    where its own ending leaves off. Returns the finished sequences, best first."""
    basis = row_space(layer_update(update, 1), settings)
    candidates = torch.tensor(sorted(set(tokens)), dtype=torch.long)
    if candidates.numel() > settings.max_candidates:
        return []
    first = torch.tensor([list(start)])
    beam = [_Prefix(list(start), prefix_inputs(model, first)[0])]
    finished: list[_Prefix] = []
    for _ in range(settings.max_len - len(start)):
        if not beam or candidates.numel() == 0:
            break
        grown: list[_Prefix] = []
        for prefix in beam:
            last = next_inputs(model, prefix.tokens, candidates, settings.chunk)
            dist = distances(last, basis)
            passing = [int(i) for i in torch.nonzero(dist < settings.prefix_tol).flatten()
                       if not _repeats(last[i], prefix.inputs, settings.prefix_tol)]
            if not passing:
                finished.append(prefix)
            grown += [_Prefix([*prefix.tokens, int(candidates[i])], torch.cat([prefix.inputs, last[i:i + 1]]),
                              prefix.score + float(dist[i])) for i in passing]
        grown.sort(key=lambda item: item.score)
        beam = grown[:settings.beam]
    finished += beam
    finished.sort(key=lambda item: (item.mean_score(len(start)), -len(item.tokens)))
    return [completed(prefix.tokens, end) for prefix in finished]


def completed(tokens: list[int], end: Sequence[int]) -> list[int]:
    """``tokens`` followed by what ``end`` adds beyond the longest part of it they already end with."""
    end = list(end)
    overlap = next((k for k in range(min(len(end), len(tokens)), 0, -1) if tokens[-k:] == end[:k]), 0)
    return tokens + end[overlap:]
