"""Bad input to the CLI: one clear line and a non-zero exit, never a traceback, checked before Ray or a model
starts, and nothing already on disk changed (issue 20, item 6: bad input as a hostile new user tried it)."""

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with its content's SHA-256 ("dir" for a directory)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _earlier_run(directory: Path, **run_config: object) -> Path:
    """A run directory as a finished run leaves it (metrics, summary, a checkpoint manifest)."""
    (directory / "checkpoint").mkdir(parents=True)
    (directory / "metrics.jsonl").write_text(json.dumps({"round": 1, "accuracy": 0.8}) + "\n")
    (directory / "summary.json").write_text(json.dumps({"preset": "encoder", "metric_final": 0.8}))
    (directory / "checkpoint" / "checkpoint.json").write_text(json.dumps({"format": 1, "run_config": run_config}))
    return directory


def _file(name: str, content: bytes | str) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path
    return write


def _model_dir(tmp: Path) -> Path:
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{'model_type': 'llama',")  # Python, not JSON
    return tmp / "model"


def _manifest(text: str) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        (tmp / "run" / "checkpoint").mkdir(parents=True)
        (tmp / "run" / "checkpoint" / "checkpoint.json").write_text(text)
        return tmp / "run"
    return write


def _node_keys(tmp: Path) -> Path:
    from server.node_keys import generate_node_keys

    generate_node_keys(tmp / "node-keys", 3)
    return tmp / "node-keys"


ONE_CLASS = "text,label\n" + "".join(f"review number {i},great\n" for i in range(40))
BAD_LINE_3 = '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": "e", "output\n'

# (what the user passes after `simulate`, with {input} standing for the file or directory `make` writes; the
# problem the one error line must name)
CASES: dict[str, tuple[Callable[[Path], Path] | None, list[str], str]] = {
    "unknown preset": (None, ["--preset", "nope"], "unknown preset 'nope'"),
    "unknown key": (None, ["--run-config", "bogus-key=1"], "unknown run-config key 'bogus-key'"),
    "mistyped value": (None, ["--run-config", "num-clients=zero"], "'num-clients' expects int"),
    "absolute model path": (None, ["--run-config", "model=/no/such/model"], "model '/no/such/model' not found"),
    "missing data path": (None, ["--run-config", "preset=encoder dataset=/no/such/data.csv"],
                          "data path '/no/such/data.csv' does not exist"),
    # 1. data files
    "empty csv": (_file("empty.csv", ""), ["--preset", "encoder", "--run-config", "dataset='{input}'"],
                  "empty.csv' is empty"),
    "malformed jsonl line": (_file("data.jsonl", BAD_LINE_3), ["--run-config", "dataset='{input}' heldout=1"],
                             "data.jsonl' line 3 is not valid JSON"),
    "binary csv": (_file("data.csv", bytes(range(256)) * 8), ["--preset", "encoder", "--run-config",
                                                              "dataset='{input}'"], "data.csv' is not UTF-8 text"),
    # 2. model directory
    "config.json not JSON": (_model_dir, ["--run-config", "model='{input}'"], "config.json is not valid JSON"),
    # 4. checkpoint manifests
    "manifest missing a key": (_manifest('{"format": 1, "round": 1}'), ["--resume", "{input}"],
                               "checkpoint.json lacks the key 'tensors'"),
    "manifest a JSON list": (_manifest("[1, 2]"), ["--resume", "{input}"],
                             "checkpoint.json holds a JSON list, not a checkpoint manifest"),
    # 5. values out of range
    "lr inf": (None, ["--run-config", "lr=inf"], "lr must be a positive finite number, got inf"),
    "lr nan": (None, ["--run-config", "lr=nan"], "lr must be a positive finite number, got nan"),
    "lr negative": (None, ["--run-config", "lr=-1"], "lr must be a positive finite number, got -1.0"),
    "rounds 10**30": (None, ["--run-config", f"num-server-rounds={10**30}"], "num-server-rounds must be in 1..999999"),
    "lora-r 10**9": (None, ["--run-config", "lora-r=1000000000"], "lora-r must be in 1..8192"),
    "batch-size 10**9": (None, ["--run-config", "batch-size=1000000000"], "batch-size must be in 1..65536"),
    "max-length 10**9": (None, ["--run-config", "max-length=1000000000"], "max-length must be in 1..1048576"),
    "dirichlet-alpha inf": (None, ["--run-config", "dirichlet-alpha=inf"], "dirichlet-alpha must be a positive finite"),
    "seed 2**70": (None, ["--run-config", f"seed={2**70}"], f"seed must be in 0..{2**63 - 1}"),
    "integer beyond 64 bits": (None, ["--run-config", f"local-steps={10**20}"],
                               "run-config key 'local-steps' must be within the signed 64-bit range"),
    "one class": (_file("one.csv", ONE_CLASS), ["--preset", "encoder", "--run-config", "dataset='{input}'"],
                  "has 1 class(es) ['great']: classification needs at least 2 labels"),
    # 6. a relative model path is a path, not a hub id
    "relative model path": (None, ["--run-config", "model=./no/such-model"], "model './no/such-model' not found"),
    "model path in an existing folder": (None, ["--run-config", "model=tests/no-such-model"],
                                         "model 'tests/no-such-model' not found"),
    # 7. flags
    "fail-partitions not ids": (None, ["--preset", "encoder", "--fail-partitions", "x,y"],
                                "--fail-partitions takes comma-separated partition ids, got 'x,y'"),
    "fail-partitions out of range": (None, ["--preset", "encoder", "--fail-partitions", "7"],
                                     "--fail-partitions: 7 is not a partition id"),
    # 8. a signed secure round that every node would refuse
    "signed threshold below 3": (_node_keys, ["--preset", "encoder", "--node-identities", "{input}", "--run-config",
                                              "secagg=true num-clients=3"],
                                 "secagg threshold 2 (for 3 clients per round) is below 3, the least the nodes accept"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_named_problem(case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    make, args, message = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    made = make(inputs) if make else inputs
    argv = [arg.replace("{input}", str(made)) for arg in args]
    out = [] if "--resume" in argv else ["--out", str(tmp_path / "out")]
    if "model path" in case:  # with the hub allowed, as for a user: the name must still be taken for a path
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    _assert_refused(["simulate", *out, *argv], message, tmp_path, capfd, monkeypatch)


def _assert_refused(argv: list[str], message: str, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``fedsqueeze argv`` (in this process) exits 2 with exactly one error line holding ``message``, no
    traceback, before any simulation starts, and leaves ``tmp_path`` as it was."""
    import simulations.simulate
    from simulations.cli import main

    def no_simulation(**_: object) -> None:
        raise AssertionError("the simulation started: the input was not refused beforehand")

    monkeypatch.setattr(simulations.simulate, "run_simulation", no_simulation)
    monkeypatch.chdir(ROOT)  # relative model paths are read from the repository root (where `tests/` exists)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fedsqueeze: error:")]
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and message in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("case", "message"), [
    ("file", "is a file, not a directory"),
    ("read-only", "cannot be written"),
    ("another run", "already holds a run (metrics.jsonl, summary.json, checkpoint): continue it with --resume"),
    ("the same run", "already holds a run"),
    ("resume elsewhere", "continues that run in its own directory: drop --out"),
    ("resume and overwrite", "--overwrite replaces a run and --resume continues it"),
])
def test_output_directory_is_refused_before_anything_is_written(case: str, message: str, tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    flags = ["--out", str(target)]
    if case == "file":
        target.write_text("notes the user keeps\n")
    elif case == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory anyway")
        target.mkdir()
        target.chmod(0o555)
    elif case in ("another run", "the same run"):
        _earlier_run(target, **({"preset": "encoder", "seed": 7} if case == "another run" else {}))
    elif case == "resume elsewhere":
        _earlier_run(target)
        flags = ["--resume", str(target), "--out", str(tmp_path / "other")]
    else:
        _earlier_run(target)
        flags = ["--resume", str(target), "--overwrite"]
    try:
        _assert_refused(["simulate", "--preset", "encoder", *flags], message, tmp_path, capfd, monkeypatch)
    finally:
        if target.is_dir():
            target.chmod(0o755)


def test_another_runs_directory_is_left_whole_by_the_real_command(tmp_path: Path) -> None:
    """The data-loss case end to end, as a user's process: refused, exit 2, every file as it was."""
    out = _earlier_run(tmp_path / "run", preset="encoder", seed=7)
    before = _snapshot(out)
    result = _run("simulate", "--out", str(out), "--preset", "encoder", tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"--resume {out}" in result.stderr and "--overwrite" in result.stderr
    assert _snapshot(out) == before


@pytest.mark.parametrize(("rows", "extra", "message"), [
    ('{"question": "q", "reply": "r"}\n', "", "has columns ['question', 'reply'], none of the SFT shapes"),
    ('{"instruction": "Say hi.", "output": "Hi."}\n' * 8, "num-clients=3 partitioner='dirichlet'",
     "partitioner=dirichlet splits by a category column, and this data has none"),
])
def test_bad_instruction_data_exits_2_with_one_line(rows: str, extra: str, message: str, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(rows)
    result = _run("simulate", "--out", str(tmp_path / "out"), "--run-config",
                  f"dataset='{data}' heldout=2 {extra}", tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("fedsqueeze: error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_deployed_run_refuses_an_out_dir_holding_another_run_before_anything_loads(tmp_path: Path) -> None:
    """``flwr run`` into a directory with an earlier run: the ServerApp stops at once, naming the run-config keys
    that would continue or replace it, and the earlier run's files stay as they were."""
    from flwr.app import Context, RecordDict

    from server.app import main
    from server.outputs import OutputDirError

    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    (tmp_path / "summary.json").write_text("{}\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"preset": "encoder", "out-dir": str(tmp_path)})
    with pytest.raises(OutputDirError, match="continue it with resume=true, replace it with overwrite=true"):
        main(None, context)  # the grid is never reached
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    both = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                   run_config={"preset": "encoder", "out-dir": str(tmp_path), "resume": True, "overwrite": True})
    with pytest.raises(ValueError, match="choose one"):
        main(None, both)
