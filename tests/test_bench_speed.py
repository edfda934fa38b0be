"""python -m rt4ksr_nodes.bench all, on a small frame: row order, checks, the JSON report kept
row by row, and tables merged from several reports."""

from __future__ import annotations

import json
import sys

import pytest

from ground_truth import shared_path
from rt4ksr_nodes.bench import cli as bench
from rt4ksr_nodes.bench import speed as bench_speed

ARGS = ["all", "--device", "cpu", "--scale", "2", "--repeat", "2", "--train-repeat", "2",
        "--warmup", "1", "--frames", "3"]


@pytest.fixture
def small_case(monkeypatch):
    monkeypatch.setattr(bench_speed, "CASES", ((2, 64, 48),))
    return ARGS + ["--weights", str(shared_path("weights"))]


def test_plain_forms_run_first_and_every_output_is_checked(small_case, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    # Forms given engine first: the benchmark still measures the plain forms before it.
    bench.main(small_case + ["--forms", "engine", "train", "fused", "--json", str(report_path)])
    report = json.loads(report_path.read_text(encoding="utf-8"))
    rows = report["rows"]
    assert [(row["form"], row["mode"]) for row in rows] == [
        (form, mode) for form in ("train", "fused", "engine") for mode in ("model", "e2e")
    ]
    for row in rows:
        assert row["median_ms"] > 0 and row["fps"] > 0 and row["compile_policy"] == "auto"
        if row["mode"] == "model":
            assert row["psnr_db"] >= 100  # fp32 against fp32: rounding differences only
        else:
            assert row["max_abs_diff"] <= 1  # 8-bit levels
    environment = report["environment"]
    assert "cpu_malloc_tuned_for_plain_forms" in environment
    assert environment["loadavg_after"]
    assert "fused) run before the engine in each process" in capsys.readouterr().out


STAND_IN_ARCH = """
import torch
from rt4ksr_nodes.model.arch import RT4KSR
from model.modules import activation


class RT4KSR_Rep(RT4KSR):  # the paper code's interface, standing in for it
    def __init__(self, num_channels, num_feats, num_blocks, upscale, act, eca_gamma, is_train,
                 forget, layernorm, residual):
        assert (act, eca_gamma, is_train, forget) == (activation("gelu"), 0, True, False)
        super().__init__(in_channels=num_channels, features=num_feats, blocks=num_blocks,
                         scale=upscale)
        self.gamma = torch.nn.Parameter(torch.zeros(1))

    def load_state_dict(self, state, strict=True):
        assert any(key.startswith("hfb.") for key in state)  # the whole release, unprefixed
        assert not any(key.startswith("module.") for key in state)
        state = {key: value for key, value in state.items() if not key.startswith("hfb.")}
        return super().load_state_dict(state, strict=strict)
"""


def test_upstream_code_is_a_baseline_when_given(small_case, tmp_path, capsys, monkeypatch):
    code = tmp_path / "code"
    (code / "model").mkdir(parents=True)
    (code / "model" / "__init__.py").write_text("")
    (code / "model" / "arch.py").write_text(STAND_IN_ARCH)
    (code / "model" / "modules.py").write_text("def activation(name):\n    return name\n")
    for name in ("model", "model.arch", "model.modules"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    bench.main(small_case + ["--modes", "model", "--upstream", str(code)])
    out = capsys.readouterr().out
    assert code.as_posix() not in sys.path
    rows = [line for line in out.splitlines() if line.startswith("x2 64x48")]
    table = rows[len(rows) // 2:]  # the rows as measured, then the table
    assert [line.split()[2] for line in table] == ["upstream", "train", "fused", "engine"]
    assert "vs upstream" in out and table[0].endswith("1.0x")
    assert all(float(line.split()[-4]) >= 100 for line in table)  # PSNR vs fused fp32


def test_upstream_needs_the_papers_code_folder(small_case, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="no model/arch.py"):
        bench.main(small_case + ["--upstream", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs --upstream"):
        bench.main(small_case + ["--forms", "upstream"])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "arch.py").write_text("class RTSR4K_Rep: pass\n")  # an older name
    (tmp_path / "model" / "modules.py").write_text("def activation(name):\n    return name\n")
    for name in ("model", "model.arch", "model.modules"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(SystemExit, match="not the code this benchmark knows"):
        bench.main(small_case + ["--upstream", str(tmp_path)])
    other = tmp_path / "other"
    (other / "model").mkdir(parents=True)
    (other / "model" / "arch.py").write_text("")
    with pytest.raises(SystemExit, match="another package named 'model'"):
        bench.main(small_case + ["--upstream", str(other)])


def test_report_keeps_the_rows_finished_before_a_failure(small_case, tmp_path, monkeypatch):
    report_path = tmp_path / "report.json"
    measure, calls = bench_speed._measure, []

    def failing_third(*args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a timeout's signal would stop the run
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_speed, "_measure", failing_third)
    with pytest.raises(KeyboardInterrupt):
        bench.main(small_case + ["--forms", "train", "fused", "--json", str(report_path)])
    rows = json.loads(report_path.read_text(encoding="utf-8"))["rows"]
    assert [(row["form"], row["mode"]) for row in rows] == [("train", "model"), ("train", "e2e")]
    assert not list(tmp_path.glob("*.partial"))


def test_merged_table_shows_each_reports_environment(tmp_path, capsys):
    paths = []
    for policy, form, compiled in (("never", "train", False), ("always", "engine", True)):
        row = {"case": "x2 64x48", "form": form, "device": "cuda", "precision": "fp16",
               "mode": "model", "median_ms": 2.0 if compiled else 8.0, "min_ms": 1.0,
               "max_ms": 3.0, "fps": 1.0, "peak_mib": None, "first_call_ms": None,
               "compiled": compiled, "psnr_db": 60.0, "max_abs_diff": 0.001}
        environment = {"device": "GPU", "cpu_threads": 4, "torch": "2", "compile_policy": policy,
                       "loadavg_before": "0", "loadavg_after": "1"}
        paths.append(tmp_path / f"{policy}.json")
        paths[-1].write_text(json.dumps({"environment": environment, "rows": [row]}))
    bench.main(["all", "--table-from", *map(str, paths)])
    lines = capsys.readouterr().out.splitlines()
    assert "compile policy never" in lines[0] and "compile policy always" in lines[1]
    engine = next(line for line in lines if "engine+c" in line)
    assert " always " in engine and engine.endswith("4.0x")  # against the other report's train
