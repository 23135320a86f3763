"""The README's promises: its first two commands exist and CI runs exactly its test command."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_starts_with_the_product_and_the_test_command() -> None:
    product, tests = _readme_commands()[:2]
    assert product.startswith("pip install -e '.[dev]'") and "python run.py" in product
    assert tests.startswith("pip install -e '.[dev]'") and "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    tests = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_run_py_names_its_commands_and_the_demo() -> None:
    # `python run.py` itself starts the demo (tests/test_demo.py runs it).
    done = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert all(word in done.stdout for word in ("station", "cloud", "demo")), done.stdout


def test_cloud_refuses_to_start_without_its_database() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "run.py", "cloud"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode != 0 and "DATABASE_URL" in done.stderr


def test_every_benchmark_is_documented() -> None:
    performance = (ROOT / "docs" / "performance.md").read_text()
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert script.name in performance, f"{script.name} has no figures in docs/performance.md"
