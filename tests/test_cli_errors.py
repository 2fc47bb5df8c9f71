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
