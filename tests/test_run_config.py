"""Run config: pyproject defaults, presets, overrides and clear errors."""

import tomllib
from pathlib import Path

import pytest

from server.run_config import DEFAULTS, ConfigError, resolve
from simulations.config_args import parse_run_config

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_app_config_equals_code_defaults() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == DEFAULTS


def test_preset_values_fill_unset_task_keys_and_overrides_win() -> None:
    cfg = resolve({"preset": "encoder"})
    assert cfg.task.model == "all-minilm-l6-v2" and cfg.task.lr == pytest.approx(3e-3)
    cfg = resolve({"preset": "encoder", "lr": 1e-4, "num-clients": 5})
    assert cfg.task.lr == pytest.approx(1e-4) and cfg.num_clients == 5
    assert resolve({}).task.model == "smollm2-135m-instruct"


@pytest.mark.parametrize(("config", "message"), [
    ({"learning-rate": 0.1}, "unknown run-config key 'learning-rate'"),
    ({"preset": "nope"}, "unknown preset 'nope'"),
    ({"partitioner": "by-hand"}, "partitioner 'by-hand' is not one of iid, dirichlet, domain"),
    ({"eval-every": 0}, "eval-every must be at least 1"),
    ({"eval-samples": -1}, "eval-samples must be >= 0"),
    ({"data-columns": "answer=output"}, "data-columns role 'answer'"),
    ({"num-clients": "three"}, "'num-clients' expects int"),
    ({"num-server-rounds": 0}, "num-server-rounds must be at least 1"),
    ({"codec": "zip"}, "unknown codec 'zip'"),
    ({"fraction-train": 1.5}, "fraction-train"),
    ({"precision": "int4"}, "precision 'int4'"),
    ({"lr": -1.0}, "lr must be a positive finite number"),
    ({"compeft-density": 0.0}, r"compeft-density must be in \(0, 1\]"),
    ({"compeft-density": 1.5}, r"compeft-density must be in \(0, 1\]"),
    ({"downlink-density": -0.1}, r"downlink-density must be in \(0, 1\]"),
    ({"compeft-alpha-scale": 0.0}, "compeft-alpha-scale must be positive"),
    ({"compeft-scope": "layer"}, "compeft-scope 'layer'"),
    ({"downlink-codec": "zip"}, "unknown downlink-codec 'zip'"),
    ({"error-feedback": "yes"}, "'error-feedback' expects bool"),
    ({"codec": "ferret", "ferret-dim": 0}, "dim must be a positive integer"),
    ({"codec": "ferret", "ferret-dim": 128, "ferret-block-size": 64}, "exceeds block_size"),
    ({"downlink-codec": "ferret"}, "downlink-codec 'ferret' needs codec 'ferret'"),
    ({"codec": "ferret", "downlink-codec": "compeft"}, "leave downlink-codec at 'dense'"),
    ({"trainable": "half"}, "trainable 'half'"),
])
def test_bad_config_is_named(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(config)


def test_run_config_parsing_accepts_bare_and_quoted_strings() -> None:
    parsed = parse_run_config("num-clients=4 codec=dense model='a b' lr=1e-3 flag=true")
    assert parsed == {"num-clients": 4, "codec": "dense", "model": "a b", "lr": 1e-3, "flag": True}
    with pytest.raises(ValueError, match="not key=value"):
        parse_run_config("num-clients")


def test_codec_options_reach_clients_as_one_record() -> None:
    cfg = resolve({"codec": "compeft", "compeft-density": 0.1, "downlink-codec": "compeft", "error-feedback": False})
    options = cfg.codec_options()
    assert options["codec"] == "compeft" and options["compeft-density"] == 0.1
    assert options["downlink-codec"] == "compeft" and options["error-feedback"] is False
    assert cfg.uplink.lossy and cfg.downlink.codec == "compeft"


def test_ferret_runs_send_coefficients_both_ways_and_full_tuning_takes_its_own_lr() -> None:
    cfg = resolve({"codec": "ferret", "ferret-dim": 32, "ferret-block-size": 4096, "trainable": "full"})
    assert cfg.downlink == cfg.uplink and cfg.downlink.codec == "ferret"
    assert cfg.codec_options()["ferret-dim"] == 32 and cfg.codec_options()["downlink-ferret-block-size"] == 4096
    assert not cfg.uplink.feedback_helps, "error feedback does not apply to an unbiased projection"
    assert cfg.task.trainable == "full" and cfg.task.lr == pytest.approx(2e-5)
    assert resolve({"trainable": "full", "lr": 1e-4}).task.lr == pytest.approx(1e-4)
    assert resolve({}).task.trainable == "lora" and resolve({}).task.lr == pytest.approx(2e-3)


def test_secure_aggregation_settings_are_checked() -> None:
    cfg = resolve({"secagg": True, "num-clients": 5})
    assert cfg.secure.enabled and cfg.secure.neighbours == 4 and cfg.secure.threshold == 3
    assert cfg.secure.clip == pytest.approx(2 * cfg.task.lr * cfg.task.local_steps)
    with pytest.raises(ConfigError, match="compeft-support=shared"):
        resolve({"secagg": True, "codec": "compeft"})
    with pytest.raises(ConfigError, match="needs secagg=true"):
        resolve({"compeft-support": "shared", "codec": "compeft"})
    with pytest.raises(ConfigError, match="at least 2 clients"):
        resolve({"secagg": True, "num-clients": 1})
    with pytest.raises(ConfigError, match="strict majority"):
        resolve({"secagg": True, "num-clients": 10, "secagg-neighbours": 9, "secagg-threshold": 3})
    with pytest.raises(ConfigError, match="dp-clip"):
        resolve({"dp-noise-multiplier": 1.0})
    assert resolve({"secagg": True, "codec": "compeft", "compeft-support": "shared"}).secure.enabled


def test_server_optimizer_keys_are_checked_and_refused_with_ferret() -> None:
    cfg = resolve({"server-optimizer": "fedyogi", "server-lr": 0.003, "fedprox-mu": 0.01})
    assert cfg.server_optimizer.name == "fedyogi" and cfg.server_optimizer.effective_lr == 0.003
    assert cfg.task.fedprox_mu == 0.01 and resolve({}).server_optimizer.effective_lr == 1.0
    assert resolve({"server-optimizer": "fedadam"}).server_optimizer.effective_lr == 0.1  # Flower's default
    with pytest.raises(ConfigError, match="unknown server-optimizer 'adam'"):
        resolve({"server-optimizer": "adam"})
    with pytest.raises(ConfigError, match="server-beta1"):
        resolve({"server-optimizer": "fedadam", "server-beta1": 1.5})
    with pytest.raises(ConfigError, match="new basis each round"):
        resolve({"server-optimizer": "fedavgm", "codec": "ferret"})
    with pytest.raises(ConfigError, match="fedprox-mu"):
        resolve({"fedprox-mu": -1.0})


def _cell_value(text: str) -> object:
    """A key table cell's default as a value: true/false, a number, or the text."""
    text = text.strip().strip("`")
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return "" if text == "''" else text


def test_key_tables_in_the_manual_are_derived_from_the_settings_dataclasses() -> None:
    from server.run_config import GROUPS, reference_page

    assert (ROOT / "docs" / "run-config.md").read_text() == reference_page(), \
        "docs/run-config.md is stale: python -m server.run_config > docs/run-config.md"
    declared = {key: text for group in GROUPS for key, text in group.help().items()}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    rows = [line.split("|")[1:-1] for page in pages for line in page.read_text().splitlines()
            if line.startswith("| `")]
    checked = 0
    for cells in rows:
        key = cells[0].strip().strip("`")
        if key in declared and len(cells) == 3:  # every table that lists run-config keys, on any page
            assert _cell_value(cells[1]) == DEFAULTS[key], key
            assert cells[2].strip() == declared[key], key
            checked += 1
    assert checked > len(DEFAULTS)  # the reference, plus the sections' own tables
