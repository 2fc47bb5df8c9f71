"""Named experimental protocols: the run-config values and seeds every configuration of a method comparison shares.

``standard`` is the measuring stick for comparisons of methods (codecs, aggregation rules, adapters, server
optimisers): SmolLM2-135M-Instruct instruction-tuned on WordNet definitions from 20 domains, 10 clients that each
hold two whole domains (non-IID by domain, FedIT's split), half of them sampled each round, 10 rounds, scored every
2 rounds, 3 seeds. ``tiny`` has the same shape, shrunk for tests (4 clients, 2 rounds, 2 seeds); tests hand it the
tiny model they build (``model=DIR``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Twenty WordNet domains with at least 450 usable synsets each, nouns and verbs: two whole domains per client.
STANDARD_DOMAINS = (
    "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.food", "noun.group", "noun.location", "noun.object", "noun.person", "noun.plant",
    "noun.quantity", "noun.state", "noun.substance", "verb.change", "verb.communication", "verb.contact",
    "verb.motion",
)


@dataclass(frozen=True)
class Protocol:
    """A named protocol: run-config values every run of a sweep starts from, and the seeds each configuration runs
    with (a sweep's own ``--seeds`` and run config override them)."""

    name: str
    help: str
    run_config: dict[str, object] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("standard", "10 clients holding 2 WordNet domains each, 5 sampled a round, 10 rounds, scored every 2, "
             "3 seeds (SmolLM2-135M-Instruct, LoRA r=8)", {
                 "preset": "sft", "topics": ",".join(STANDARD_DOMAINS), "per-topic": 60, "heldout": 80,
                 "num-clients": 10, "fraction-train": 0.5, "num-server-rounds": 10, "eval-every": 2,
                 "local-steps": 4, "batch-size": 8, "max-length": 80, "eval-samples": 16, "max-new-tokens": 20,
                 "partitioner": "domain"}),
    Protocol("tiny", "the standard protocol's shape shrunk for tests: 4 clients with 2 domains each, 2 sampled a "
             "round, 2 rounds, 2 seeds (pass the tiny model as model=DIR)", {
                 "preset": "sft", "topics": ",".join(STANDARD_DOMAINS[:8]), "per-topic": 8, "heldout": 16,
                 "num-clients": 4, "fraction-train": 0.5, "num-server-rounds": 2, "eval-every": 1,
                 "local-steps": 2, "batch-size": 4, "max-length": 48, "lr": 1e-2, "eval-samples": 2,
                 "max-new-tokens": 4, "partitioner": "domain"}, seeds=(0, 1)),
)}


def protocol(name: str) -> Protocol:
    """The protocol called ``name``; ValueError naming the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{name}' (choose from {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]
