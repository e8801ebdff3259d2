"""seqmnist.bench: runs both paths on tiny data and reports figures (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

from seqmnist import bench


def test_macs_per_sample_counts_every_gate_gemm() -> None:
    c = bench.BenchConfig("x", "gru", 2, 10, 8)
    # layer 1: 28 steps x 3 gates x 10 x (28 + 10); layer 2: input is the hidden state.
    assert bench.macs_per_sample(c) == 28 * 3 * 10 * 38 + 28 * 3 * 10 * 20 + 10 * 10


def test_bench_writes_json_table_and_ratio_line(
    synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bench.json"
    bench.main(
        [
            "--root",
            str(synthetic_root),
            "--val-size",
            "100",
            "--rounds",
            "1",
            "--samples",
            "640",
            "--configs",
            "lstm128-bs128",
            "--out",
            str(out),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["cell"] == "lstm" and row["batch_size"] == 128
    assert row["plain_samples_per_s"] > 0 and row["lightning_samples_per_s"] > 0
    assert abs(row["ratio"] - row["lightning_samples_per_s"] / row["plain_samples_per_s"]) < 2e-3
    assert row["efficiency_vs_matmul"] > 0
    assert any(ln.startswith("| lstm128-bs128") for ln in lines)
    assert lines[-1] == f"bench: lightning/plain = {row['ratio']:.3f}"
