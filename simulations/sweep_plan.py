"""What a sweep will run: named configurations (a grid of run-config values, named ones, or both) × seeds, on a
protocol, each combination checked by the run config before anything starts.

A sweep is given on the command line (``--grid "codec=dense,compeft compeft-density=0.05,0.1"``, ``--config
"NAME: key=value ..."``, ``--seeds 0,1,2``, ``--run-config "..."``) or in a TOML file (below), or both (the command
line adds configurations and overrides seeds, target, protocol and run-config values)::

    protocol = "standard"
    seeds = [0, 1, 2]
    target = "dense"                        # a configuration's mean final primary metric, or a number
    evaluate-tasks = ["fedsqueeze_wordnet_gloss"]
    [run-config]                            # shared by every configuration
    downlink-codec = "compeft"
    [grid]                                  # every combination of these values
    compeft-density = [0.05, 0.1]
    [configs.dense]                         # named configurations (each crossed with the grid, if there is one)
    codec = "dense"
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simulations.config_args import parse_run_config
from simulations.protocols import protocol as named_protocol

# Keys the sweep sets itself for every run: a grid or configuration may not set them.
SWEEP_KEYS = {"seed": "--seeds", "out-dir": "--out", "resume": "rerunning the sweep",
              "overwrite": "rerunning the sweep"}
FILE_KEYS = ("protocol", "seeds", "target", "evaluate-tasks", "run-config", "grid", "configs")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]+")

Values = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: a configuration's name, its seed, where it writes and the run config it runs with."""

    name: str
    seed: int
    directory: Path
    run_config: Values


@dataclass
class SweepPlan:
    """Every configuration (name -> the run-config values it sets over the shared ones) and seed of a sweep."""

    out: Path
    configurations: dict[str, Values]
    shared: Values
    seeds: tuple[int, ...]
    protocol: str = ""
    target: str | float | None = None
    evaluate_tasks: tuple[str, ...] = ()
    runs: list[RunSpec] = field(default_factory=list)

    def as_record(self) -> dict[str, object]:
        """The plan as JSON (written to sweep.json beside the results)."""
        return {"protocol": self.protocol, "seeds": list(self.seeds), "target": self.target,
                "evaluate_tasks": list(self.evaluate_tasks), "shared_run_config": self.shared,
                "configurations": self.configurations}


def directory_name(name: str) -> str:
    """The folder a configuration's runs go in: its name with characters other than letters, digits and
    ``. _ + = , -`` replaced by ``_``."""
    return _UNSAFE.sub("_", name).strip("_") or "_"


def parse_grid(text: str) -> dict[str, list[object]]:
    """``"codec=dense,compeft compeft-density=0.05,0.1"`` -> {key: [values]}; ValueError names a malformed part."""
    grid: dict[str, list[object]] = {}
    if not text.strip():
        raise ValueError("--grid is empty: give at least one KEY=VALUE[,VALUE...]")
    for part in text.split():
        key, sep, raw = part.partition("=")
        if not sep or not key:
            raise ValueError(f"grid entry '{part}' is not KEY=VALUE[,VALUE...]")
        if key in grid:
            raise ValueError(f"grid key '{key}' is given twice")
        values = [v for v in raw.split(",") if v != ""]
        if not values:
            raise ValueError(f"grid key '{key}' has no values")
        grid[key] = [next(iter(parse_run_config(f"{key}={v}").values())) for v in values]
    return grid


def parse_config(text: str) -> tuple[str, Values]:
    """``"NAME: key=value ..."`` -> (NAME, values); ValueError for a missing name."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--config '{text}' needs a name: NAME: key=value ...")
    return name.strip(), parse_run_config(rest)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); ValueError for a non-integer, a negative or a repeated seed, or none."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    return check_seeds(seeds)


def check_seeds(seeds: Sequence[object]) -> tuple[int, ...]:
    """The seeds as a tuple; ValueError for none, a non-integer, a negative or a repeated one."""
    if not seeds:
        raise ValueError("a sweep needs at least one seed")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seeds must be integers >= 0, got {seed!r}")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seed {next(s for s in seeds if list(seeds).count(s) > 1)} is given twice")
    return tuple(int(s) for s in seeds)  # type: ignore[call-overload]


def read_file(path: Path) -> dict[str, object]:
    """A sweep file's settings; ValueError naming the file and what is wrong with it."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"sweep file '{path}' not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read sweep file '{path}': {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"sweep file '{path}' is not valid TOML: {exc}") from None
    unknown = sorted(set(document) - set(FILE_KEYS))
    if unknown:
        raise ValueError(f"sweep file '{path}': unknown key '{unknown[0]}' (known: {', '.join(FILE_KEYS)})")
    for key in ("run-config", "grid", "configs"):
        if not isinstance(document.get(key, {}), dict):
            raise ValueError(f"sweep file '{path}': '{key}' must be a table")
    for name, values in document.get("configs", {}).items():
        if not isinstance(values, dict):
            raise ValueError(f"sweep file '{path}': configs.{name} must be a table of run-config values")
    for key, values in document.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep file '{path}': grid.{key} must be a non-empty list of values")
    return document


def _scalars(values: Mapping[str, object], where: str) -> Values:
    for key, value in values.items():
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"{where}: the value of '{key}' must be a string, number or boolean, got {value!r}")
    return dict(values)  # type: ignore[arg-type]


def _label(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def combine(grid: Mapping[str, Sequence[object]], configs: Mapping[str, Values]) -> dict[str, Values]:
    """Every named configuration crossed with every combination of the grid's values, by name; ValueError for an
    empty sweep or two configurations with one name (or one folder)."""
    combos: list[tuple[str, Values]] = [("", {})]
    if grid:
        keys = list(grid)
        combos = [(",".join(f"{k}={_label(v)}" for k, v in zip(keys, chosen, strict=True)),
                   dict(zip(keys, chosen, strict=True)))  # type: ignore[arg-type]
                  for chosen in itertools.product(*(grid[k] for k in keys))]
    named = list(configs.items()) or [("", {})]
    if not grid and not configs:
        raise ValueError("the grid is empty: give --grid KEY=VALUE,..., --config 'NAME: ...' or a sweep file with "
                         "[grid] or [configs.NAME]")
    out: dict[str, Values] = {}
    folders: dict[str, str] = {}
    for (config_name, config), (combo_name, combo) in itertools.product(named, combos):
        name = " ".join(part for part in (config_name, combo_name) if part)
        folder = directory_name(name)
        if name in out:
            raise ValueError(f"configuration name '{name}' is given twice")
        if folder in folders:
            raise ValueError(f"configurations '{folders[folder]}' and '{name}' would share the folder '{folder}': "
                             "rename one")
        folders[folder] = name
        out[name] = {**config, **combo}
    return out


def build_plan(out: Path, *, grid_text: str | None = None, configs: Sequence[str] = (), seeds_text: str = "",
               run_config_text: str = "", protocol_name: str = "", target: str = "",
               evaluate_tasks: str = "", file: Path | None = None,
               named_configs: Mapping[str, Mapping[str, object]] | None = None) -> SweepPlan:
    """The sweep these arguments describe (``named_configs``: configurations given as mappings, by programs such
    as the benchmarks), every run's config checked by the run config (``resolve``); ValueError with one line naming
    the first problem, before anything runs."""
    from server.run_config import resolve

    document = read_file(file) if file is not None else {}
    protocol_name = protocol_name or str(document.get("protocol", ""))
    chosen = named_protocol(protocol_name) if protocol_name else None
    grid: dict[str, list[object]] = {k: list(v) for k, v in document.get("grid", {}).items()}  # type: ignore[union-attr]
    if grid_text is not None:
        for key, values in parse_grid(grid_text).items():
            grid[key] = values
    named: dict[str, Values] = {str(k): _scalars(v, f"configs.{k}")
                                for k, v in document.get("configs", {}).items()}  # type: ignore[union-attr]
    given = [*((str(k), _scalars(v, f"configuration '{k}'")) for k, v in (named_configs or {}).items()),
             *map(parse_config, configs)]
    for name, values in given:
        if name in named:
            raise ValueError(f"configuration name '{name}' is given twice")
        named[name] = values
    shared: Values = {**(chosen.run_config if chosen else {}),  # type: ignore[dict-item]
                      **_scalars(document.get("run-config", {}), "run-config"),  # type: ignore[arg-type]
                      **parse_run_config(run_config_text)}
    configurations = combine(grid, named)
    for where, values in [("--run-config", shared), *((f"configuration '{n}'", v)
                                                      for n, v in configurations.items())]:
        taken = sorted(set(values) & set(SWEEP_KEYS))
        if taken:
            raise ValueError(f"{where} sets '{taken[0]}', which the sweep sets for each run ({SWEEP_KEYS[taken[0]]})")
    if seeds_text:
        seeds = parse_seeds(seeds_text)
    elif "seeds" in document:
        seeds_value = document["seeds"]
        seeds = check_seeds(seeds_value if isinstance(seeds_value, list) else [seeds_value])
    else:
        seeds = chosen.seeds if chosen else (0,)
    goal = _target(target or document.get("target"), configurations)
    tasks = tuple(t for t in (evaluate_tasks.split(",") if evaluate_tasks else
                              document.get("evaluate-tasks", [])) if str(t).strip())  # type: ignore[union-attr]
    plan = SweepPlan(out, configurations, shared, seeds, protocol_name, goal, tuple(str(t).strip() for t in tasks))
    for name, values in configurations.items():
        for seed in seeds:
            directory = out / directory_name(name) / f"seed-{seed}"
            run_config = {**shared, **values, "seed": seed}
            try:
                resolve({**run_config, "out-dir": str(directory)})
            except ValueError as exc:
                raise ValueError(f"configuration '{name}': {exc}") from None
            plan.runs.append(RunSpec(name, seed, directory, run_config))
    return plan


def _target(value: object, configurations: Mapping[str, Values]) -> str | float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value)
    if text in configurations:
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"target '{text}' is neither a number nor a configuration of this sweep "
                         f"({', '.join(configurations)})") from None
