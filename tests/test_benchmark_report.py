"""The README's benchmark section is generated from benchmarks/results/*.json and cannot go stale."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402
import report  # noqa: E402


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip


def test_readme_section_is_what_report_renders():
    proc = run_report("--check")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr


def test_every_committed_result_is_from_a_clean_commit_with_its_command():
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        assert data["name"] == path.stem
        assert data["env"]["git_sha"], f"{path.name}: no commit recorded"
        assert not data["env"]["git_dirty"], f"{path.name}: measured on a dirty tree; rerun it on a commit"
        script = next((w for w in data["command"].split() if w.startswith("benchmarks/")), None)
        assert script and (ROOT / script).is_file(), f"{path.name}: command {data['command']!r} runs no benchmark"
        for target in data["targets"]:
            assert target["figure"] in data["figures"], f"{path.name}: target on unknown figure {target['figure']}"


@pytest.fixture()
def results_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A README and a results folder with one result written by the Recorder, in sync."""
    results = tmp_path / "results"
    monkeypatch.setattr(record, "RESULTS", results)
    rec = record.Recorder("toy", title="Toy benchmark", command="python benchmarks/toy.py --seeds 3")
    rec.figure("acc", [0.91, 0.93, 0.92], label="accuracy", digits=3)
    rec.figure("gain_db", [0.40, 0.70, 0.55], label="gain", unit="dB", digits=2)
    rec.target("acc", ">=", 0.9, text="accuracy floor")
    rec.target("gain_db", ">=", 0.5)
    rec.table("per model", ["model", "acc"], [["a", 0.91234567], ["b", 0.5]])
    rec.note("A note.")
    rec.write(summary="Toy summary.")
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nintro\n\n{report.BEGIN}\n{report.END}\n\n## After\n")
    assert report.main(["--readme", str(readme), "--results", str(results)]) == 0
    return readme, results


def test_check_fails_when_a_figure_changes(results_copy, capsys):
    readme, results = results_copy
    text = readme.read_text()
    assert "0.920 ± 0.010" in text and "## After" in text and text.startswith("# T\n\nintro")
    assert "accuracy 0.920 ± 0.010 >= 0.9 (margin +0.020, n=3): met" in text
    assert "gain 0.55 ± 0.15 dB >= 0.5 (margin +0.05, n=3): NOT met" in text  # margin below the std
    assert report.main(["--check", "--readme", str(readme), "--results", str(results)]) == 0
    path = results / "toy.json"
    data = json.loads(path.read_text())
    data["figures"]["acc"]["mean"] = 0.95
    path.write_text(json.dumps(data))
    assert report.main(["--check", "--readme", str(readme), "--results", str(results)]) == 1
    assert "0.950" in capsys.readouterr().out


def test_unreadable_result_or_missing_markers_name_the_file(results_copy, tmp_path):
    readme, results = results_copy
    (results / "broken.json").write_text("{not json")
    proc = run_report("--check", "--readme", str(readme), "--results", str(results))
    assert proc.returncode == 2 and "broken.json" in proc.stderr and "rerun" in proc.stderr
    (results / "broken.json").unlink()
    bare = tmp_path / "bare.md"
    bare.write_text("# no markers\n")
    proc = run_report("--readme", str(bare), "--results", str(results))
    assert proc.returncode == 2 and "bare.md" in proc.stderr and report.BEGIN in proc.stderr
    assert bare.read_text() == "# no markers\n"


@pytest.mark.parametrize(
    ("mean", "std", "op", "threshold", "met"),
    [
        (0.92, 0.01, ">=", 0.90, True),
        (0.92, 0.03, ">=", 0.90, False),  # holds on the mean, margin inside the spread
        (0.89, 0.00, ">=", 0.90, False),
        (0.90, 0.00, ">=", 0.90, True),  # one repeat: the mean must hold
        (0.00, 0.00, ">", 0.0, False),  # strict: equality is not a win
        (0.68, 0.02, "in", (0.63, 0.73), True),
        (0.72, 0.02, "in", (0.63, 0.73), False),
        (1.05, 0.02, "<=", 1.10, True),
        (float("nan"), 0.0, "<=", 1.10, False),
    ],
)
def test_target_needs_the_mean_and_a_margin_above_the_std(mean, std, op, threshold, met):
    assert record.target_met(mean, std, op, threshold)[0] is met


def test_results_folder_is_only_written_through_temporaries(results_copy):
    _, results = results_copy
    assert [p.name for p in results.iterdir()] == ["toy.json"]
    assert shutil.which("git") is None or record.environment()["git_sha"]
