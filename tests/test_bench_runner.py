"""python -m rt4ksr_nodes.bench runner: its workflow is valid and a tiny run prints the table."""

from conftest import shared_path
from rt4ksr_nodes import bench
from rt4ksr_nodes.bench_runner import folder_prompt
from rt4ksr_nodes.runner import registry
from rt4ksr_nodes.runner.validate import validate


def test_folder_workflow_is_valid():
    assert validate(folder_prompt(), registry.node_classes()) == []


def test_tiny_run_prints_both_paths(monkeypatch, capsys):
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))
    bench.main(["runner", "--images", "2", "--size", "64x48", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "2 synthetic 64x48 PNG frames" in out
    assert "| headless runner, folder batch |" in out and "| quick-inference CLI per file |" in out
