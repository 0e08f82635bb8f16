"""`flatcoat bench --quick` with tiny sizes: a well-formed, self-consistent report (no timing thresholds)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flatcoat
from flatcoat import bench


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    from flatcoat.cli import main

    assert main(["bench", "--quick", "--size-factor", "0.002", "--repeats", "2", "--json", str(path), "--no-progress"]) == 0
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_report_records_the_machine_and_settings(report):
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    assert report["versions"]["flatcoat"] == flatcoat.__version__
    assert report["settings"]["threads"] == flatcoat.get_num_threads()
    assert report["settings"]["isas"] == [flatcoat.info()["isa"]]


def test_ceilings_are_positive(report):
    for name in ("read_gb_per_s", "fma_gflops", "int8_gops", "popcount_g_per_s", "bf16_gflops"):
        assert report["ceilings"][name] > 0, name


def test_every_kernel_is_measured_and_figures_are_consistent(report):
    kernels = {row["kernel"].split(" Q=")[0] for row in report["rows"]}
    for storage in ("f32", "f16", "bf16", "int8", "binary"):
        assert f"dense {storage}" in kernels
    for storage in ("f32", "f16", "int8"):
        assert f"maxsim {storage}" in kernels
    assert any(k.startswith("top-k") for k in kernels)
    # PLAID's stage 4 (decompression + MaxSim), set against the FMA roof
    plaid = [row for row in report["rows"] if row["kernel"] == "plaid 2-bit decompress+maxsim"]
    assert len(plaid) == 1 and plaid[0]["bound"] == "fma" and plaid[0]["item"] == "docs"
    assert plaid[0]["operations"] > 0 and plaid[0]["bytes_moved"] > 0
    for row in report["rows"]:
        assert row["seconds"] > 0 and row["items_per_s"] > 0 and row["percent_of_ceiling"] > 0
        assert len(row["repeats"]) == report["settings"]["repeats"]
        assert math.isclose(row["seconds"], sorted(row["repeats"])[len(row["repeats"]) // 2], rel_tol=0.5)
        # bytes moved / time = GB/s, operations / time = GOP/s
        assert math.isclose(row["gb_per_s"], row["bytes_moved"] / row["seconds"] / 1e9, rel_tol=1e-9)
        assert math.isclose(row["gops"], row["operations"] / row["seconds"] / 1e9, rel_tol=1e-9)
        roofs = report["ceilings_by_isa"][row["isa"]]  # each ISA is set against its own instructions' roofs
        ceiling = {"bandwidth": roofs["read_gb_per_s"], "fma": roofs["fma_gflops"], "int8": roofs["int8_gops"],
                   "popcount": roofs["popcount_g_per_s"], "bf16": roofs["bf16_gflops"]}[row["bound"]]
        achieved = row["gb_per_s"] if row["bound"] == "bandwidth" else row["gops"]
        assert math.isclose(row["percent_of_ceiling"], 100 * achieved / ceiling, rel_tol=1e-9)


def test_every_isa_gets_a_row_with_isa_all(tmp_path):
    usable = [i for i in flatcoat.info()["compiled_isas"] if flatcoat._core.cpu_supports(i)]
    with open(tmp_path / "t", "w") as out:
        r = bench.run(quick=True, isa="all", size_factor=0.001, repeats=5, progress=False, out=out)
    assert sorted({row["isa"] for row in r["rows"]}) == sorted(usable)
    assert sorted(row["isa"] for row in r["rows"] if row["kernel"].startswith("plaid")) == sorted(usable)
    assert flatcoat.info()["isa"] == flatcoat._core.active_isa()  # restored
    # kernel by kernel, every level in order, each with one time per round
    kernels = list(dict.fromkeys(row["kernel"] for row in r["rows"]))
    assert [(row["kernel"], row["isa"]) for row in r["rows"]] == [(k, i) for k in kernels for i in usable]
    assert all(len(row["repeats"]) == 5 for row in r["rows"])
    # one comparison per kernel and level above the first, against the level just below
    seconds = {(row["kernel"], row["isa"]): row["seconds"] for row in r["rows"]}
    assert [(c["kernel"], c["isa"], c["below"]) for c in r["comparisons"]] == [
        (k, i, b) for k in kernels for b, i in zip(usable, usable[1:])]
    for c in r["comparisons"]:
        assert math.isclose(c["ratio"], seconds[c["kernel"], c["isa"]] / seconds[c["kernel"], c["below"]])
        assert c["low"] <= c["high"] and c["coverage"] == 1 - 2 / 2**5
        same = bench.code_level(c["kernel"], c["isa"]) == bench.code_level(c["kernel"], c["below"])
        assert (c["verdict"] == "same kernel") == same
        assert c["same_code_as"] == (bench.code_level(c["kernel"], c["isa"]) if same else None)
    table = (tmp_path / "t").read_text()
    if "genoa" in usable:  # genoa adds nothing the float32 scan uses: said, not measured as a difference
        assert re.search(r"\| dense f32 Q=1 \| genoa \| icelake \| [0-9.]+ \| .* \| same kernel as skylake \|", table)
        assert re.search(r"\| dense bf16 Q=1 \| genoa \| icelake \| .*\| (slower|faster|within noise|\*\*slower\*\*) \|",
                         table)


def test_rounds_time_every_level_once_in_a_rotated_order(restore_isa):
    usable = [i for i in flatcoat.info()["compiled_isas"] if flatcoat._core.cpu_supports(i)]
    calls = []
    times = bench._interleaved(lambda: calls.append(flatcoat._core.active_isa()), usable, rounds=7)
    n = len(usable)
    assert calls[:n] == usable  # the warm-up, one call each
    rounds = [calls[n + r * n: n + (r + 1) * n] for r in range(7)]
    for r, order in enumerate(rounds):
        assert order == usable[r % n:] + usable[: r % n]
    assert {isa: len(t) for isa, t in times.items()} == {isa: 7 for isa in usable}


def test_median_interval_is_the_sign_tests():
    # 5 values: the extremes, 1 - 2/32; 9: the second from each end, 1 - 2 * 10/512; 1: no confidence
    assert bench._median_interval([3, 1, 5, 2, 4]) == (1, 5, 1 - 2 / 32)
    assert bench._median_interval(list(range(9))) == (1, 7, 1 - 2 * 10 / 512)
    assert bench._median_interval([2.0]) == (2.0, 2.0, 0.0)


def _row(kernel, isa, repeats):
    return bench.Row(kernel, isa, 1, sorted(repeats)[len(repeats) // 2], 0.0, 1.0, "vectors", 0.0, 0.0,
                     "bandwidth", 0.0, 1.0, 1.0, list(repeats))


def test_comparisons_flag_only_what_the_rounds_agree_on():
    # Made-up rows: only the compiled levels matter (code_level), not what this CPU runs.
    levels = flatcoat.info()["compiled_isas"]
    if levels[:3] != ["scalar", "haswell", "skylake"]:
        pytest.skip("an x86 build: these rows name the x86 levels (this build has " + ", ".join(levels) + ")")
    base = [1.0, 1.1, 0.9, 1.2, 1.0]
    rows = [_row("dense int8 Q=1", "scalar", base),
            _row("dense int8 Q=1", "haswell", [t * 1.05 for t in base]),  # slower in every round
            _row("dense int8 Q=1", "skylake", [1.1, 1.0, 1.0, 1.3, 1.0]),  # against haswell: mixed
            _row("dense f32 Q=64", "scalar", base),
            _row("dense f32 Q=64", "haswell", [0.5 * t for t in base]),
            _row("dense f32 Q=64", "skylake", [0.5 * t for t in base])]
    if "icelake" in levels:
        rows += [_row("dense f32 Q=64", "icelake", [t * 2 for t in base])]  # skylake's code: not a difference
    verdicts = {(c.kernel, c.isa): c.verdict for c in bench.compare_levels(rows)}
    assert verdicts[("dense int8 Q=1", "haswell")] == "slower"
    assert verdicts[("dense int8 Q=1", "skylake")] == "within noise"
    assert verdicts[("dense f32 Q=64", "haswell")] == "faster"
    assert verdicts[("dense f32 Q=64", "skylake")] == "within noise"
    if "icelake" in levels:
        assert verdicts[("dense f32 Q=64", "icelake")] == "same kernel"
    few = bench.compare_levels([_row("dense f32 Q=1", "scalar", [1, 1]), _row("dense f32 Q=1", "haswell", [2, 2])])
    assert few[0].verdict == "too few rounds"


def test_code_level_follows_the_instructions_each_level_adds():
    levels = flatcoat.info()["compiled_isas"]
    assert all(bench.code_level("top-k k=10 of 1,000", isa) == "scalar" for isa in levels)
    assert all(bench.code_level(f"dense f32 Q={q}", isa) == isa for q in (1, 64) for isa in levels
               if isa in ("scalar", "haswell", "skylake", "neon"))
    if "genoa" in levels:
        expected = {"dense f32 Q=1": "skylake", "dense f16 Q=64": "skylake", "dense bf16 Q=1": "genoa",
                    "dense int8 Q=64": "icelake", "dense binary Q=1": "haswell", "maxsim f32": "skylake",
                    "maxsim int8": "icelake", "pq4 fast-scan Q=64": "skylake"}
        assert {k: bench.code_level(k, "genoa") for k in expected} == expected
        assert bench.code_level("dense binary Q=1", "genoa", dim=512) == "icelake"  # 8 words: vpopcntq
    if "sapphirerapids" in levels:  # batches of int8 and bf16 on tiles; single queries as genoa
        expected = {"dense int8 Q=64": "sapphirerapids", "dense bf16 Q=64": "sapphirerapids",
                    "dense int8 Q=1": "icelake", "dense bf16 Q=1": "genoa", "dense f32 Q=64": "skylake",
                    "maxsim int8": "sapphirerapids", "maxsim f32": "skylake"}
        assert {k: bench.code_level(k, "sapphirerapids") for k in expected} == expected
    with pytest.raises(ValueError, match="unknown kernel"):
        bench.code_level("sparse f32", levels[0])


def test_levels_said_to_share_a_kernel_give_the_same_bits(restore_isa, rng):
    """What code_level calls one kernel gives bit-identical float scores on every level that runs it."""
    from flatcoat.dense import DenseIndex
    from flatcoat.multivector import MultiVectorIndex

    usable = [i for i in flatcoat.info()["compiled_isas"] if flatcoat._core.cpu_supports(i)]
    x = rng.standard_normal((300, 97), dtype=np.float32)
    q = rng.standard_normal((9, 97), dtype=np.float32)
    lengths = np.array([5, 7, 3, 9])
    tokens = rng.standard_normal((int(lengths.sum()), 97), dtype=np.float32)
    searches = {}
    for storage in ("f32", "f16", "bf16"):
        index = DenseIndex(97, storage=storage)
        index.add(x)
        for nq in (1, 9):
            searches[f"dense {storage} Q={nq}"] = lambda index=index, nq=nq: index.search(q[:nq], k=20)[0]
    for storage in ("f32", "f16"):
        mv = MultiVectorIndex(97, storage=storage)
        mv.add((tokens, lengths))
        searches[f"maxsim {storage}"] = lambda mv=mv: mv.search(q[:4], k=4)[0]
    for kernel, search in searches.items():
        by_code = {}
        for isa in usable:
            flatcoat._core.set_active_isa(isa)
            by_code.setdefault(bench.code_level(kernel, isa, dim=97), []).append((isa, search()))
        for code, results in by_code.items():
            for isa, scores in results[1:]:
                assert np.array_equal(scores, results[0][1]), (kernel, isa, code)


def test_roofline_of_every_isa_is_written(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    usable = [i for i in flatcoat.info()["compiled_isas"] if flatcoat._core.cpu_supports(i)]
    drawn = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        drawn.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    path = tmp_path / "roofline.png"
    with open(tmp_path / "t", "w") as out:
        bench.run(quick=True, isa="all", size_factor=0.001, repeats=1, progress=False, plot_path=str(path), out=out)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == usable  # one panel per ISA, each with its own roofs
    assert all(len(ax.get_lines()) == 4 for ax in panels)
    assert len(fig.legends) == 1  # one legend, for the figure, outside the panels


def test_bad_isa_is_a_clear_error(capsys):
    from flatcoat.cli import main

    assert main(["bench", "--isa", "avx9", "--no-progress"]) == 2
    assert "--isa: 'avx9' is not usable here" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match="pip install matplotlib"):
        bench.run(quick=True, size_factor=0.001, plot_path=str(tmp_path / "r.png"), progress=False)


def test_ceilings_use_the_best_isa_and_restore_the_active_one():
    usable = [i for i in flatcoat.info()["compiled_isas"] if flatcoat._core.cpu_supports(i)]
    before = flatcoat._core.active_isa()
    try:
        flatcoat._core.set_active_isa(usable[0])
        c = bench.measure_ceilings(1, bandwidth_bytes=1 << 20, rounds=1000, repeats=1)
        assert flatcoat._core.active_isa() == usable[0]
    finally:
        flatcoat._core.set_active_isa(before)
    assert set(c) == {"read_gb_per_s", "fma_gflops", "int8_gops", "popcount_g_per_s", "bf16_gflops"}
    assert all(v > 0 for v in c.values())


@pytest.mark.parametrize("kwargs, error, name", [
    ({"repeats": 2.0}, TypeError, "repeats"), ({"repeats": 0}, ValueError, "repeats"),
    ({"threads": True}, TypeError, "threads"), ({"quick": "yes"}, TypeError, "quick"),
    ({"size_factor": 0}, ValueError, "size_factor"),
])
def test_run_checks_its_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        bench.run(**{"quick": True, "size_factor": 0.001, "progress": False, **kwargs})


BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_bench_scripts_use_the_installed_package_and_compile_nothing(script):
    source = (BENCH / script).read_text()
    # no python/ source tree on sys.path or PYTHONPATH: os.path.join(..., "python") or Path / "python"
    assert not re.search(r"""["']python["']\s*\)|/\s*["']python["']""", source), script
    # ceilings come from the core's probes, not from C compiled at run time
    assert "CDLL" not in source and '"-shared"' not in source, script


def test_ceilings_script_runs_against_the_installed_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(BENCH / "ceilings.py"), "--bytes", str(1 << 20), "--repeats", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "probe_read_bandwidth" in done.stdout and "core probes" in done.stdout
    done = subprocess.run([sys.executable, str(BENCH / "maxsim.py"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--quick" in done.stdout, done.stderr


def test_info_lists_each_levels_cpu_features_and_they_decide_support(capsys):
    features = flatcoat.info()["cpu_features"]
    levels = list(features)  # least to most capable
    assert levels == [isa for isa in ("haswell", "skylake", "icelake", "genoa", "sapphirerapids", "neon")
                      if isa in levels]
    if "icelake" in levels:
        assert set(features["icelake"]) == {"avx512vnni", "avx512vpopcntdq", "avx512vbmi", "avx512vbmi2",
                                            "avx512bitalg"}
    if "genoa" in levels:
        assert set(features["genoa"]) == {"avx512bf16"}
    if "sapphirerapids" in levels:  # present only where the OS grants the tile state too
        assert set(features["sapphirerapids"]) == {"amx-tile", "amx-int8", "amx-bf16"}
    for at, isa in enumerate(levels):
        needed = [present for level in levels[: at + 1] for present in features[level].values()]
        assert flatcoat._core.cpu_supports(isa) == all(needed), isa
    from flatcoat.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for isa, found in features.items():
        line = next(l for l in out.splitlines() if l.startswith(f"features {isa} "))
        for name, present in found.items():
            assert (name if present else f"{name}(missing)") in line.split()


def test_probes_count_each_levels_own_work():
    """Work per probe call follows the level's instruction width; rates are positive and finite."""
    usable = [i for i in flatcoat.info()["compiled_isas"] if flatcoat._core.cpu_supports(i)]
    before = flatcoat._core.active_isa()
    fma_work = {}
    try:
        for isa in usable:
            flatcoat._core.set_active_isa(isa)
            for probe in (flatcoat._core.probe_fma, flatcoat._core.probe_int8, flatcoat._core.probe_popcount):
                one, two = probe(1000, 1), probe(1000, 2)
                assert two.work == 2 * one.work and one.rate > 0 and math.isfinite(one.rate)
            fma_work[isa] = flatcoat._core.probe_fma(1000, 1).work
    finally:
        flatcoat._core.set_active_isa(before)
    # 12 zmm chains (16 lanes) on the AVX-512 levels, 10 ymm chains (8 lanes) on haswell; an FMA counts 2.
    for isa, lanes_x_chains in (("haswell", 8 * 10), ("skylake", 16 * 12), ("icelake", 16 * 12), ("genoa", 16 * 12)):
        if isa in fma_work:
            assert fma_work[isa] == 2 * 1000 * lanes_x_chains, isa


def test_the_bf16_probe_runs_where_the_level_has_vdpbf16ps(restore_isa):
    for isa in [i for i in flatcoat.info()["compiled_isas"] if flatcoat._core.cpu_supports(i)]:
        flatcoat._core.set_active_isa(isa)
        if isa == "genoa":
            seconds, flops = flatcoat._core.probe_bf16(1000, 1)
            # 12 chains x 16 lanes x 2 products x 2 flops per round
            assert seconds > 0 and flops == 1000 * 12 * 16 * 2 * 2
        elif isa == "sapphirerapids":
            seconds, flops = flatcoat._core.probe_bf16(1000, 1)
            # 4 tiles x 16 x 16 lanes x 32 products x 2 flops per round (tdpbf16ps)
            assert seconds > 0 and flops == 1000 * 4 * 16 * 16 * 32 * 2
        else:
            with pytest.raises(ValueError, match="no bfloat16 dot instruction"):
                flatcoat._core.probe_bf16(1000, 1)
