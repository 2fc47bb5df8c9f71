"""Bad input to the CLI: one clear line and a non-zero exit, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--run-config", "bogus-key=1"], "unknown run-config key 'bogus-key'"),
    (["--run-config", "num-clients=zero"], "'num-clients' expects int"),
    (["--run-config", "model=/no/such/model"], "model '/no/such/model' not found"),
    (["--run-config", "preset=encoder dataset=/no/such/data.csv"], "data path '/no/such/data.csv' does not exist"),
])
def test_bad_input_exits_2_with_a_named_problem(args: list[str], message: str, tmp_path: Path) -> None:
    result = _run("simulate", "--out", str(tmp_path / "out"), *args, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


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
