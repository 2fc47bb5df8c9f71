"""Word definitions from WordNet 3.0 (Debian's ``wordnet-base``): a human-written instruction data set, filed by
domain, that needs no network.

Each synset in ``data.noun`` / ``data.verb`` names its lexicographer file (its domain: ``noun.animal``,
``verb.motion`` ...), its words and a gloss (the definition, then example sentences in quotes). A word becomes an
instruction ("Define the word ...") whose response is the gloss's definition.
"""

from __future__ import annotations

import os
from pathlib import Path

WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/opt/homebrew/share/wordnet")
# The lexicographer files in WordNet's fixed numbering (lexnames(5WN)); the two digits after a synset's offset.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
PROMPT = "Define the word '{word}' in one short phrase."


def find_wordnet_dir() -> Path:
    """The directory holding WordNet's ``data.*`` files (``FEDSQUEEZE_WORDNET_DIR`` first)."""
    from client.task.data import DataNotFoundError

    candidates = [os.environ["FEDSQUEEZE_WORDNET_DIR"]] if os.environ.get("FEDSQUEEZE_WORDNET_DIR") else []
    for candidate in [*candidates, *WORDNET_DIRS]:
        if (Path(candidate) / "data.noun").is_file():
            return Path(candidate)
    raise DataNotFoundError("no WordNet data files found: install Debian's 'wordnet-base' package "
                            "(apt-get install wordnet-base), or set FEDSQUEEZE_WORDNET_DIR to a directory holding "
                            "WordNet 3.0's data.noun and data.verb")


def parse_synset(line: str) -> tuple[str, list[str], str] | None:
    """(domain, words, definition) of one ``data.*`` line, or None for the licence header and glossless lines."""
    if line.startswith("  ") or " | " not in line:
        return None
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    domain = LEXNAMES[int(parts[1])]
    count = int(parts[3], 16)
    words = [parts[4 + 2 * i].replace("_", " ") for i in range(count)]
    definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
    return domain, words, definition


def load_definitions(domains: tuple[str, ...], per_domain: int = 0, directory: Path | None = None
                     ) -> dict[str, list[str]]:
    """Columns ``word``, ``definition`` and ``category`` (the domain) for the synsets of ``domains``, in file
    order: one row per word (its first sense in the file), lower-case words of letters, spaces and hyphens only
    (no proper names), at most ``per_domain`` rows per domain (0 = all)."""
    from client.task.data import DataNotFoundError

    unknown = [d for d in domains if d not in LEXNAMES]
    if unknown:
        raise ValueError(f"unknown WordNet domain '{unknown[0]}' (domains are lexicographer files such as "
                         "noun.animal, noun.food, verb.motion)")
    root = directory or find_wordnet_dir()
    wanted, seen = set(domains), set()
    rows: dict[str, list[str]] = {"word": [], "definition": [], "category": []}
    counts = dict.fromkeys(domains, 0)
    for part in sorted({d.split(".")[0] for d in domains}):
        path = root / f"data.{part}"
        if not path.is_file():
            raise DataNotFoundError(f"WordNet file '{path}' not found")
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                parsed = parse_synset(line)
                if parsed is None or parsed[0] not in wanted or not parsed[2]:
                    continue
                domain, words, definition = parsed
                if per_domain and counts[domain] >= per_domain:
                    continue
                word = words[0]
                if word in seen or not word.replace(" ", "").replace("-", "").isalpha() or word != word.lower():
                    continue
                seen.add(word)
                counts[domain] += 1
                rows["word"].append(word)
                rows["definition"].append(definition)
                rows["category"].append(domain)
    empty = [d for d in domains if counts[d] == 0]
    if empty:
        raise DataNotFoundError(f"WordNet domain '{empty[0]}' has no usable synsets in {root}")
    return rows
