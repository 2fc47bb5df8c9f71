"""Named task presets: the bundled model and data combinations that run offline."""

from __future__ import annotations

PRESETS: dict[str, dict[str, str | int | float]] = {
    # The default job: SmolLM2-135M-Instruct learns to define words (WordNet 3.0's human-written glosses), clients
    # split by domain (each holds a few of the seven), judged by held-out response perplexity and ROUGE-L.
    "sft": {
        "kind": "sft",
        "model": "smollm2-135m-instruct",
        "dataset": "wordnet",
        "topics": "noun.animal,noun.plant,noun.artifact,noun.food,noun.body,verb.body,verb.motion",
        "per-topic": 220,
        "heldout": 48,
        "max-length": 96,
        "lora-r": 8,
        "lora-alpha": 16,
        "lora-targets": "q_proj,k_proj,v_proj,o_proj",
        "lr": 2e-3,
        "full-lr": 2e-5,
        "local-steps": 8,
        "batch-size": 8,
        "partitioner": "domain",
        "eval-samples": 24,
        "max-new-tokens": 24,
    },
    # SmolLM2-135M-Instruct scores one topic token after a prompt; six balanced fortune topics.
    "fortunes": {
        "kind": "prompt-classification",
        "model": "smollm2-135m-instruct",
        "dataset": "fortunes",
        "topics": "computers,food,law,love,politics,sports",
        "per-topic": 150,
        "heldout": 120,
        "max-length": 64,
        "lora-r": 8,
        "lora-alpha": 16,
        "lora-targets": "q_proj,k_proj,v_proj,o_proj",
        "lr": 2e-3,
        "full-lr": 2e-5,
        "local-steps": 8,
        "batch-size": 8,
        "partitioner": "dirichlet",
        "eval-samples": 0,
        "max-new-tokens": 24,
    },
    # all-MiniLM-L6-v2 with mean pooling and a linear head on the Fine Food reviews: fast, for tests.
    "encoder": {
        "kind": "encoder-classification",
        "model": "all-minilm-l6-v2",
        "dataset": "finefoods",
        "topics": "",
        "per-topic": 0,
        "heldout": 200,
        "max-length": 96,
        "lora-r": 8,
        "lora-alpha": 16,
        "lora-targets": "query,value",
        "lr": 3e-3,
        "full-lr": 5e-5,
        "local-steps": 10,
        "batch-size": 16,
        "partitioner": "dirichlet",
        "eval-samples": 0,
        "max-new-tokens": 24,
    },
}
