"""Smoke tests of the benchmark scripts (benchmarks/) at tiny sizes, and of `neuronspec bench`."""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _timing as tm  # noqa: E402
import bench_counting  # noqa: E402
import bench_masked_ffn  # noqa: E402
import bench_train_step  # noqa: E402

from neuronspec import bench as bench_cli  # noqa: E402


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- timing helper ---------------------------------------------------------------------------
def test_measure_interleaves_and_reports_errors():
    calls = []

    def boom():
        raise RuntimeError("kernel exploded")

    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "bad": boom}
    out = tm.measure(fns, torch.device("cpu"), repeats=4, warmup=1)
    assert isinstance(out["bad"], str) and "kernel exploded" in out["bad"]
    assert len(out["a"].samples) == 4 and len(out["b"].samples) == 4
    timed = calls[4:]  # after warm-up and the calibration call of each
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order rotates every round
    s = tm.Stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median == 3.0 and s.q1 == 2.0 and s.q3 == 4.0 and s.iqr == 2.0
    med, q1, q3 = tm.ratio_stats(tm.Stats([2.0, 4.0, 6.0]), tm.Stats([1.0, 1.0, 2.0]))
    assert (med, q1, q3) == (3.0, 2.5, 3.5)
    with pytest.raises(ValueError, match="repeats"):
        tm.measure(fns, torch.device("cpu"), repeats=0)


def test_parsers_name_the_flag():
    assert tm.parse_shapes("base,12x34") == [("base", 512, 2048), ("12x34", 12, 34)]
    with pytest.raises(ValueError, match="--shapes"):
        tm.parse_shapes("huge")
    with pytest.raises(ValueError, match="--p"):
        tm.parse_list("0.5,x", float, "--p")
    with pytest.raises(ValueError, match="--dtype"):
        tm.parse_dtype("int8")
    info = tm.machine_info(torch.device("cpu"))
    assert info["torch"] == torch.__version__ and info["cpu"] and info["cpu_count"] >= 1


# ---- masked FFN ----------------------------------------------------------------------------------
def test_masked_ffn_tiny(tmp_path, capsys):
    rc = bench_masked_ffn.main(["--device", "cpu", "--shapes", "16x48", "--tokens", "40", "--p", "0.25,1.0",
                                "--modes", "fwd,bwd,fwd+bwd,inference", "--tasks", "1,3", "--repeats", "2",
                                "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0
    rows = read_csv(tmp_path / "masked_ffn.csv")
    provs = {r["provider"] for r in rows}
    # triton is interpreted on CPU: not timed by default
    assert provs == {"dense", "reference", "auto", "maskmul", "torch"}
    # 2 batches x 4 modes x (1 dense + 4 providers x 2 p)
    assert len(rows) == 2 * 4 * 9
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows if r["status"] != "ok"]
    for r in rows:
        assert float(r["median_ms"]) > 0 and int(r["repeats"]) == 2
        if r["provider"] != "dense":
            assert float(r["max_rel_err"]) < 1e-4
            assert float(r["speedup"]) == pytest.approx(
                float([d for d in rows if d["provider"] == "dense" and d["mode"] == r["mode"]
                       and d["batch"] == r["batch"]][0]["median_ms"]) / float(r["median_ms"]), rel=1e-3)
    meta = json.loads((tmp_path / "masked_ffn.json").read_text())["meta"]
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__ and "load_avg_end" in meta
    md = (tmp_path / "masked_ffn.md").read_text()
    assert "mixed3" in md and "homogeneous" in md and "ideal 1/p" in md
    assert (tmp_path / "masked_ffn.png").stat().st_size > 10_000
    assert "| 0.25 |" in capsys.readouterr().out


def test_masked_ffn_flags_wrong_output(tmp_path, monkeypatch):
    """A provider whose output is wrong is marked and makes the script exit non-zero."""
    real = bench_masked_ffn.forward_fn

    def broken(provider, *a):
        fn = real(provider, *a)
        return (lambda: fn() * 1.5) if provider == "torch" else fn

    monkeypatch.setattr(bench_masked_ffn, "forward_fn", broken)
    rc = bench_masked_ffn.main(["--device", "cpu", "--shapes", "8x16", "--tokens", "8", "--p", "0.5",
                                "--modes", "fwd", "--tasks", "1", "--repeats", "1", "--no-plot", "--out", str(tmp_path)])
    assert rc == 1
    status = {r["provider"]: r["status"] for r in read_csv(tmp_path / "masked_ffn.csv")}
    assert status == {"dense": "ok", "reference": "ok", "auto": "ok", "maskmul": "ok", "torch": "WRONG OUTPUT"}


@pytest.mark.parametrize("flags, message", [
    (["--p", "0,0.5"], "--p"),
    (["--shapes", "enormous"], "--shapes"),
    (["--modes", "sideways"], "--modes"),
    (["--providers", "gpu"], "unknown provider"),
    (["--tokens", "0"], "--tokens"),
    (["--dtype", "int4"], "--dtype"),
])
def test_masked_ffn_bad_flags(tmp_path, capsys, flags, message):
    assert bench_masked_ffn.main(["--device", "cpu", "--out", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "masked_ffn.csv").exists()


def test_unavailable_providers_are_skipped(tmp_path, capsys):
    """An unavailable provider (cuda on this CPU, e.g. after a failed CUDA build) is skipped with
    one line saying why; the others are measured."""
    rc = bench_masked_ffn.main(["--device", "cpu", "--shapes", "8x16", "--tokens", "8", "--p", "0.5", "--modes", "fwd",
                                "--tasks", "1", "--repeats", "1", "--providers", "cuda,torch", "--no-plot",
                                "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("skipping 'cuda'") == 1, err
    assert {r["provider"] for r in read_csv(tmp_path / "masked_ffn.csv")} == {"dense", "torch"}
    rc = bench_counting.main(["--device", "cpu", "--shapes", "8x16", "--tokens", "8", "--tasks", "1", "--repeats", "1",
                              "--backends", "cuda,torch", "--out", str(tmp_path)])
    assert rc == 0 and "--backends: skipping 'cuda'" in capsys.readouterr().err
    assert "fused-torch" in {r["provider"] for r in read_csv(tmp_path / "counting.csv")}


# ---- counting ---------------------------------------------------------------------------------------
def test_counting_tiny(tmp_path):
    rc = bench_counting.main(["--device", "cpu", "--shapes", "16x48", "--tokens", "64", "--tasks", "1,3",
                              "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0
    rows = read_csv(tmp_path / "counting.csv")
    assert [r["provider"] for r in rows[:4]] == ["fc1+act", "fused-torch", "fused-torch-nowrite", "hook"]
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        if r["provider"] == "fc1+act":
            assert float(r["overhead_pct"]) == 0.0
        else:
            assert r["counts_correct"] == "True"
            base = float([b for b in rows if b["provider"] == "fc1+act" and b["batch"] == r["batch"]][0]["median_ms"])
            assert float(r["overhead_pct"]) == pytest.approx((float(r["median_ms"]) / base - 1) * 100, rel=1e-3, abs=0.1)
    assert "overhead vs fc1+act" in (tmp_path / "counting.md").read_text()


def test_counting_hook_counts_per_task_and_skips_padding():
    counts = torch.zeros(2, 3, dtype=torch.long)
    act = torch.nn.ReLU()
    task_vec = torch.tensor([0, 1, 1, 0])
    valid = torch.tensor([True, True, False, True])
    bench_counting.HookCounter(act, counts, task_vec, task_vec, valid)
    act(torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0], [2.0, 3.0, -4.0]]))
    assert counts.tolist() == [[2, 1, 0], [1, 1, 1]]


# ---- train step ---------------------------------------------------------------------------------------
def test_train_step_tiny(tmp_path):
    rc = bench_train_step.main(["--device", "cpu", "--models", "tiny", "--batch-tokens", "32", "--seq-len", "8",
                                "--vocab", "64", "--batches", "homogeneous,mixed", "--tasks", "3", "--repeats", "1",
                                "--warmup", "0", "--out", str(tmp_path)])
    assert rc == 0
    rows = read_csv(tmp_path / "train_step.csv")
    assert [(r["batch"], r["variant"]) for r in rows] == [
        ("homogeneous", "dense"), ("homogeneous", "specialized"), ("mixed", "dense"), ("mixed", "specialized")]
    for r in rows:
        assert r["status"] == "ok" and float(r["tgt_tokens_per_s"]) > 0 and int(r["tgt_tokens"]) == 32
        assert float(r["saved_mib"]) > 0
        assert float(r["kept_fraction"]) == (1.0 if r["variant"] == "dense" else pytest.approx(0.75, abs=0.01))
        share = float(r["ffn_flop_share"])
        assert 0.05 < share < 0.95  # tiny model, 8-token sentences: attention and the output layer matter
        want = 1.0 if r["variant"] == "dense" else 1 / (1 - 0.25 * share)
        assert float(r["ideal_speedup"]) == pytest.approx(want, rel=0.02)


def test_train_step_cuda_graphs_needs_cuda(tmp_path, capsys):
    rc = bench_train_step.main(["--device", "cpu", "--models", "tiny", "--cuda-graphs", "--out", str(tmp_path)])
    assert rc == 2 and "--cuda-graphs: CUDA graphs need a CUDA device" in capsys.readouterr().err


def test_train_step_count_masks():
    from neuronspec.nmt.model import ModelConfig, Transformer

    cfg = dict(seq_len=6, batch_tokens=24, tasks=2, device=torch.device("cpu"))
    model = Transformer(ModelConfig.from_preset("tiny", vocab_size=50))
    gen = torch.Generator().manual_seed(0)
    batches = [bench_train_step.random_batch(cfg, 50, "homogeneous", t, gen) for t in range(2)]
    masks = bench_train_step.count_masks(model, batches, 2, k=0.5)
    assert set(masks) == set(model.ffn_layers())
    for m in masks.values():
        frac = m.fractions()
        assert m.num_tasks == 2 and bool((frac > 0).all()) and bool((frac < 0.75).all())


# ---- neuronspec bench -----------------------------------------------------------------------------------
def parse_bench(*argv):
    parser = argparse.ArgumentParser()
    bench_cli.configure_parser(parser)
    return parser.parse_args(list(argv))


def test_bench_cli_commands(tmp_path):
    cmds = bench_cli.commands(parse_bench("--device", "cpu", "--out", str(tmp_path)))
    assert [n for n, _ in cmds] == ["masked_ffn", "counting", "train_step"]
    for name, argv in cmds:
        assert argv[1].endswith(f"bench_{name}.py") and Path(argv[1]).is_file()
        assert argv[argv.index("--preset") + 1] == "quick" and argv[argv.index("--out") + 1] == str(tmp_path)
    full = bench_cli.commands(parse_bench("--full", "--only", "counting", "--device", "cpu", "--repeats", "3"))
    assert len(full) == 1 and "full" in full[0][1] and full[0][1][-2:] == ["--repeats", "3"]
    for bad in (["--only", "everything"], ["--full", "--preset", "quick"], ["--repeats", "0"]):
        with pytest.raises(ValueError):
            bench_cli.commands(parse_bench(*bad))
    assert bench_cli.run(parse_bench("--only", "nothing")) == 2


def test_bench_cli_runs_a_benchmark(tmp_path, monkeypatch):
    """run() launches the script as a subprocess (argv shortened to tiny sizes here)."""
    real = bench_cli.commands

    def tiny(args):
        return [(n, argv + ["--shapes", "8x16", "--tokens", "8", "--tasks", "1", "--warmup", "0"]) for n, argv in real(args)]

    monkeypatch.setattr(bench_cli, "commands", tiny)
    assert bench_cli.run(parse_bench("--only", "counting", "--device", "cpu", "--repeats", "1",
                                     "--out", str(tmp_path))) == 0
    assert len(read_csv(tmp_path / "counting.csv")) == 4


# ---- GPU suite script ---------------------------------------------------------------------------------------
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def run_suite(out, timeout, **env):
    return subprocess.run(["bash", str(SUITE), str(out)], env=dict(os.environ, NEURONSPEC_SUITE_DRY="1", **env),
                          capture_output=True, text=True, timeout=timeout)


def archive_names(out):
    import tarfile

    with tarfile.open(out / "gpu_suite.tgz") as tar:
        return {n.removeprefix("./") for n in tar.getnames()}


def test_gpu_suite_steps_are_ordered_and_fit_the_budget():
    """The training step first, then the masked FFN, the build and the GPU tests; the step limits
    sum to at most 420 s (the GPU run's budget)."""
    import re

    steps = re.findall(r"^\s*step (\w+) (\d+) ", SUITE.read_text(), re.M)
    names = [n for n, _ in steps]
    assert names[:5] == ["info", "train_step", "masked_ffn", "build", "tests"], names
    assert sum(int(limit) for _, limit in steps) <= 420


@pytest.mark.slow
def test_gpu_suite_dry_run(tmp_path):
    """Every step's real command line at tiny sizes on CPU; one archive (and suite.log) in OUTDIR
    holding every step's log and results."""
    r = run_suite(tmp_path, 1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (tmp_path / "suite.log").read_text()
    assert "failed: none" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_suite.tgz", "suite.log"]
    names = archive_names(tmp_path)
    has_nvcc = "SKIP  build, build_sm90 (missing here" not in log  # nvcc, pybind11, CUTLASS headers
    for step in ("info", "train_step", "masked_ffn", "build", "tests", "masked_ffn_cuda", "counting",
                 "train_step_torch", "build_sm90", "masked_ffn_cuda_sm90"):
        if step.startswith("build") and not has_nvcc:
            continue
        assert f"OK    {step} " in log and f"{step}.log" in names, step
    for f in ("suite.log", "versions.txt", "nvidia-smi.txt", "train_step/train_step.csv", "masked_ffn/masked_ffn.csv",
              "masked_ffn_cuda/masked_ffn.csv", "counting/counting.csv", "train_step_torch/train_step.csv"):
        assert f in names, f
    import tarfile

    with tarfile.open(tmp_path / "gpu_suite.tgz") as tar:
        masked_log = tar.extractfile("./masked_ffn.log").read().decode()
        tests_log = tar.extractfile("./tests.log").read().decode()
    assert "skipping 'cuda'" in masked_log  # no CUDA module here: one line, the others measured
    assert "tests collected" in tests_log and "test_cuda.py" in tests_log


def test_gpu_suite_records_a_failed_step_and_packs(tmp_path):
    """A step that fails is recorded, the suite goes on, the exit status says so, and the archive
    already holds the failed step's log."""
    skip = "info,train_step,build,tests,masked_ffn_cuda,counting,train_step_torch,build_sm90,masked_ffn_cuda_sm90"
    r = run_suite(tmp_path, 120, NEURONSPEC_SUITE_SKIP=skip, PYTHON="false")
    log = (tmp_path / "suite.log").read_text()
    assert r.returncode == 1 and "FAIL  masked_ffn exit 1" in log and "failed: masked_ffn" in log, log
    assert "masked_ffn.log" in archive_names(tmp_path)


def test_profile_script_tiny(tmp_path, capsys):
    import profile_masked_ffn

    assert profile_masked_ffn.main(["--shape", "8x32", "--tokens", "16", "--p", "0.5", "--iters", "1",
                                    "--out", str(tmp_path)]) == 0
    text = (tmp_path / "profile_masked_ffn.md").read_text()
    assert "**dense**" in text and "**torch p=0.5**" in text and "GEMMs" in text
    assert profile_masked_ffn.main(["--shape", "nope", "--out", str(tmp_path)]) == 2


def test_kernel_providers_when_asked(tmp_path):
    """Triton (its interpreter here, a GPU elsewhere) goes through the same timing/checking path."""
    from neuronspec.ops import available_backends

    if "triton" not in available_backends("cpu"):
        pytest.skip("triton is not available on this CPU (no TRITON_INTERPRET=1)")
    rc = bench_masked_ffn.main(["--device", "cpu", "--shapes", "16x64", "--tokens", "24", "--p", "0.5",
                                "--modes", "fwd+bwd", "--tasks", "2", "--repeats", "1", "--warmup", "0",
                                "--providers", "dense,triton", "--no-plot", "--out", str(tmp_path)])
    assert rc == 0
    rows = {r["provider"]: r for r in read_csv(tmp_path / "masked_ffn.csv")}
    assert rows["triton"]["status"] == "ok" and float(rows["triton"]["max_rel_err"]) < 1e-4
    rc = bench_counting.main(["--device", "cpu", "--shapes", "16x64", "--tokens", "24", "--tasks", "2",
                              "--repeats", "1", "--warmup", "0", "--backends", "triton", "--out", str(tmp_path)])
    assert rc == 0
    assert all(r["status"] == "ok" for r in read_csv(tmp_path / "counting.csv"))


# ---- plain call ----------------------------------------------------------------------------------
def test_plain_call_tiny(tmp_path, capsys):
    import bench_plain_call
    rc = bench_plain_call.main(["--tokens", "64", "--d", "16", "--f", "32", "--p", "0.5", "--tasks", "3",
                                "--backends", "auto,torch,maskmul", "--rounds", "2", "--inner", "1",
                                "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "plain_call.json").read_text())["rows"]
    assert [r["provider"] for r in rows] == ["dense", "auto", "torch", "maskmul"]
    assert all(r["median_ms"] > 0 and r["ratio"] > 0 for r in rows)
    assert "dense / it" in capsys.readouterr().out
    assert bench_plain_call.main(["--p", "0"]) == 2
    assert bench_plain_call.main(["--backends", "fastest"]) == 2
    rc = bench_plain_call.main(["--tokens", "16", "--d", "8", "--f", "16", "--backends", "cuda,torch", "--rounds", "1",
                                "--inner", "1", "--out", str(tmp_path)])
    assert rc == 0 and "skipping 'cuda'" in capsys.readouterr().err
    assert [r["provider"] for r in json.loads((tmp_path / "plain_call.json").read_text())["rows"]] == ["dense", "torch"]
