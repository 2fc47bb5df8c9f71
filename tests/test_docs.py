"""The manual cannot rot silently: every ``fedsqueeze`` command line in README.md and docs/ parses with the CLI's
own argument parser, every run-config key (and attack setting, privacy-floor key) a page names exists, and every
relative link and anchor resolves. Each check is also run on a page with a planted error, so a check that cannot
fail is caught too."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = ("...", "[", "<", "$")  # a synopsis or shell expansion: its subcommand, options and keys are checked
KEY = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Command:
    """One ``fedsqueeze`` command as a page writes it."""

    page: str
    line: int
    argv: list[str]  # after the program name
    partial: bool  # inline mention or synopsis: names are checked, not a whole parse


def _fenced_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, inside a code fence) with backslash continuations joined."""
    fence, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if fence and line.rstrip().endswith("\\"):
            pending, start = pending + line.rstrip()[:-1] + " ", start or number
            continue
        yield (start or number), pending + line, fence
        pending, start = "", 0


def _argv_after_program(tokens: list[str]) -> list[str] | None:
    for i, token in enumerate(tokens):
        if token == "fedsqueeze" or token.endswith("/fedsqueeze"):
            return tokens[i + 1:]
        if token == "./dev" and tokens[i + 1:i + 2] == ["demo"]:
            return ["simulate", *tokens[i + 2:]]
        if "=" not in token:  # an environment assignment may come first, nothing else
            return None
    return None


def commands(text: str, page: str) -> list[Command]:
    """Every fedsqueeze command a page writes: lines in code fences, and inline code that starts with one."""
    found = []
    for number, line, fenced in _fenced_lines(text):
        candidates = [(line, False)] if fenced else [(span, True) for span in re.findall(r"`([^`]+)`", line)]
        for candidate, inline in candidates:
            try:
                tokens = shlex.split(candidate, comments=True)
            except ValueError:
                continue
            if not tokens or (inline and not re.match(r"^(\S*/)?fedsqueeze |^\./dev demo", candidate)):
                continue
            argv = _argv_after_program(tokens)
            if argv:
                partial = inline or any(p in candidate.split("#")[0] for p in PLACEHOLDERS)
                found.append(Command(page, number, argv, partial))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _setting_keys() -> dict[str, set[str]]:
    """The key=value namespaces a page may name: the run config, attack settings, a node's privacy floor and the
    node config keys fedsqueeze reads."""
    from dataclasses import fields

    from client.privacy_floor import FLOOR_KEY, PrivacyFloor
    from client.warm_channel import TRAINER_SOCKET_KEY
    from server.run_config import DEFAULTS
    from simulations.attacks.harness import AttackConfig

    def hyphenated(cls: type) -> set[str]:
        return {f.name.replace("_", "-") for f in fields(cls)}

    return {"run config": set(DEFAULTS), "attack": hyphenated(AttackConfig), "privacy floor": hyphenated(PrivacyFloor),
            "node config": {"partition-id", "num-partitions", "device", TRAINER_SOCKET_KEY, FLOOR_KEY}}


def _pairs(text: str) -> list[tuple[str, str]] | None:
    """``key=value key=value`` as pairs; None when the text is not written that way."""
    try:
        tokens = [t for t in shlex.split(text) if t != "..."]
    except ValueError:
        return None
    pairs = [token.partition("=") for token in tokens]
    if not pairs or any(not sep or not KEY.match(key) or value.startswith("=") for key, sep, value in pairs):
        return None
    return [(key, value) for key, _, value in pairs]


def command_problems(command: Command, parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with one command: the parser refuses it, or a key it sets does not exist."""
    where = f"{command.page}:{command.line}: fedsqueeze {' '.join(command.argv)}"
    subcommands = _subparsers(parser)
    if not command.argv or command.argv[0] not in subcommands:
        return [f"{where}: no such subcommand"]
    sub = subcommands[command.argv[0]]
    problems = [f"{where}: {command.argv[0]} has no option {token.split('=')[0]}" for token in command.argv[1:]
                if token.startswith("--") and token.split("=")[0] not in sub._option_string_actions]  # no abbreviations
    if command.partial:
        values = _option_values(command.argv)
    else:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = parser.parse_args(command.argv)
        except SystemExit:
            return [*problems, f"{where}: {stderr.getvalue().strip().splitlines()[-1]}"]
        values = {"--run-config": getattr(args, "run_config", ""), "--node-floor": getattr(args, "node_floor", ""),
                  "--privacy-floor": getattr(args, "privacy_floor", "")}
    namespace = "attack" if command.argv[0] == "attack" else "run config"
    known = _setting_keys()
    for option, space in (("--run-config", namespace), ("--node-floor", "privacy floor"),
                          ("--privacy-floor", "privacy floor")):
        for key, _ in _pairs(values.get(option) or "") or []:
            if key not in known[space]:
                problems.append(f"{where}: {option} names '{key}', which is no {space} key")
    return problems


def _option_values(argv: list[str]) -> dict[str, str]:
    values = {}
    for option, value in itertools.pairwise(argv):
        if option.startswith("--"):
            values[option] = value
    return values


def key_problems(text: str, page: str) -> list[str]:
    """Inline ``key=value`` settings in the prose whose key no namespace declares."""
    known = set().union(*_setting_keys().values())
    problems = []
    for number, line, fenced in _fenced_lines(text):
        if fenced:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            for key, _ in _pairs(span) or []:
                if key not in known:
                    problems.append(f"{page}:{number}: `{span}` names '{key}', which no setting declares")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a page's headings make (repeats get -1, -2, ... as on the code host)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line, fenced in _fenced_lines(text):
        match = re.match(r"^#{1,6} (.+)$", line)
        if match and not fenced:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def link_problems(text: str, path: Path) -> list[str]:
    """Relative links whose file is missing, and anchors no heading makes."""
    problems = []
    for number, line, fenced in _fenced_lines(text):
        if fenced:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT)}:{number}: link {target}"
            if not linked.exists():
                problems.append(f"{where}: {file} does not exist")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked.read_text())):
                problems.append(f"{where}: no heading makes #{anchor}")
    return problems


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from simulations.cli import build_parser

    return build_parser()


def test_every_command_in_the_manual_parses_with_the_cli(parser: argparse.ArgumentParser) -> None:
    found = [c for page in PAGES for c in commands(page.read_text(), str(page.relative_to(ROOT)))]
    assert len([c for c in found if not c.partial]) >= 25 and {c.argv[0] for c in found} >= {
        "simulate", "attack", "generate", "report", "certs", "coordinator", "node", "submit", "register-node",
        "app-hash"}
    assert [p for c in found for p in command_problems(c, parser)] == []


def test_every_setting_a_page_names_exists() -> None:
    assert [p for page in PAGES for p in key_problems(page.read_text(), str(page.relative_to(ROOT)))] == []


def test_every_relative_link_and_anchor_resolves() -> None:
    assert all(page.exists() for page in PAGES) and len(PAGES) >= 13
    assert [p for page in PAGES for p in link_problems(page.read_text(), page)] == []
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "the README is a front page; the manual lives in docs/"
    linked = set(re.findall(r"\]\(docs/([^)#]+)", readme))
    assert linked >= {p.name for p in PAGES[1:]}, "the front page links every page of the manual"


def test_the_checks_catch_planted_errors(parser: argparse.ArgumentParser) -> None:
    page = ROOT / "docs" / "deployment.md"
    text = page.read_text()
    broken_option = text.replace("fedsqueeze coordinator --certs certs/ ", "fedsqueeze coordinator --cert certs/ ", 1)
    assert any("--cert" in p for c in commands(broken_option, "x") for p in command_problems(c, parser))
    bad_value = text.replace("num-server-rounds=2", "num-server-rounds=2 num-rounds=3", 1)
    assert any("'num-rounds'" in p for c in commands(bad_value, "x") for p in command_problems(c, parser))
    missing = text + "\n`fedsqueeze deploy --out x`\n"
    assert any("no such subcommand" in p for c in commands(missing, "x") for p in command_problems(c, parser))
    assert key_problems("Set `compeft-densty=0.1` here.", "x") != []
    assert link_problems("See [it](secure-aggregation.md#no-such-heading).", page) != []
    assert link_problems("See [it](no-such-page.md).", page) != []
    assert link_problems("See [it](secure-aggregation.md#secure-aggregation-and-differential-privacy).", page) == []
