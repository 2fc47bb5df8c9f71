"""``fedsqueeze_wordnet_gloss``: which of four WordNet glosses defines a word (multiple choice, built offline).

Items come from Debian's WordNet files through ``client/task/wordnet.py``, from the default SFT preset's domains,
leaving out every word that preset trains on, so a score measures definitions the adapter never saw. Each item:
the word, its gloss and three glosses of other words of the same domain (a same-domain distractor cannot be ruled
out by topic alone), in a seeded order.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from client.task.presets import PRESETS
from client.task.wordnet import PROMPT, load_definitions

if TYPE_CHECKING:
    from datasets import DatasetDict

DOMAINS = tuple(str(PRESETS["sft"]["topics"]).split(","))
TRAINED_PER_DOMAIN = int(PRESETS["sft"]["per-topic"])  # the words the default preset trains on: never asked
PER_DOMAIN = 40
CHOICES = 4
SEED = 0


def build_items(domains: tuple[str, ...] = DOMAINS, per_domain: int = PER_DOMAIN, *, seed: int = SEED,
                skip: int = TRAINED_PER_DOMAIN, directory: Path | None = None) -> list[dict[str, object]]:
    """Up to ``per_domain`` items per domain, none about a word that ``load_definitions(domains, skip)`` returns
    (the SFT preset's training words when ``skip`` is its ``per-topic``), shuffled with ``seed`` so that the first
    N items (lm-eval's ``--limit``) mix the domains. Each item holds ``word``, ``category``, ``question`` (the SFT
    task's own prompt), ``choices`` (``CHOICES`` distinct glosses: the word's own and glosses of other words of its
    domain) and ``label`` (the index of the word's own gloss). The same arguments give the same items. ValueError
    when a domain has no word left, or too few glosses to draw distractors from."""
    if per_domain < 1:
        raise ValueError(f"per_domain must be at least 1, got {per_domain}")
    trained = set(load_definitions(domains, skip, directory)["word"]) if skip else set()
    rows = load_definitions(domains, 0, directory)
    by_domain: dict[str, list[tuple[str, str]]] = {domain: [] for domain in domains}
    for word, definition, domain in zip(rows["word"], rows["definition"], rows["category"], strict=True):
        by_domain[domain].append((word, definition))
    items = [item for domain in domains
             for item in _domain_items(domain, by_domain[domain], trained, per_domain, seed)]
    random.Random(f"{seed}:order").shuffle(items)
    return items


def _domain_items(domain: str, pairs: list[tuple[str, str]], trained: set[str], per_domain: int, seed: int
                  ) -> list[dict[str, object]]:
    asked = [(word, definition) for word, definition in pairs if word not in trained][:per_domain]
    glosses = sorted({definition for _, definition in pairs})  # the distractor pool: every gloss of the domain
    if not asked or len(glosses) < CHOICES:
        raise ValueError(f"WordNet domain '{domain}' has {len(asked)} untrained words and {len(glosses)} glosses: "
                         "too few for gloss items")
    rng = random.Random(f"{seed}:{domain}")  # a string seed: the same draws in every process
    items = []
    for word, definition in asked:
        distractors = rng.sample([gloss for gloss in glosses if gloss != definition], CHOICES - 1)
        label = rng.randrange(CHOICES)
        items.append({"word": word, "category": domain, "question": PROMPT.format(word=word),
                      "choices": [*distractors[:label], definition, *distractors[label:]], "label": label})
    return items


def wordnet_gloss_dataset(**options: object) -> DatasetDict:
    """lm-eval's ``custom_dataset`` hook: the items as a ``test`` split, built in memory (no hub, no cache files).
    lm-eval passes the task's ``metadata`` and ``dataset_kwargs``; ``per_domain`` and ``seed`` are read."""
    from datasets import Dataset, DatasetDict

    items = build_items(per_domain=int(str(options.get("per_domain", PER_DOMAIN))),
                        seed=int(str(options.get("seed", SEED))))
    return DatasetDict({"test": Dataset.from_list(items)})
