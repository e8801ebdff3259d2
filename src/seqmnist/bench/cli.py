"""Training throughput: the project's Lightning path against a plain PyTorch loop.

``python -m seqmnist.bench`` (``make bench``) times, in one process, on the same in-memory
data and the same network code (:mod:`seqmnist.bench.throughput` does the timing):

* **plain**: a hand-written loop (index a batch, forward, cross-entropy, backward, Adam step;
  fused Adam in both paths, as in ``conf/optimizer/adam.yaml``);
* **lightning**: ``SeqMNISTDataModule`` + ``SeqClassifier`` + ``Trainer`` with metrics and
  TensorBoard logging on and the progress bar off,

alternating the two for a few rounds after a warm-up so machine noise hits both alike. For
each config it reports the median samples/s of both, the ratio (the median of each round's
Lightning/plain ratio: the two runs of a round are back to back, so a machine whose speed
drifts from minute to minute still compares like with like), and the efficiency against a FLOP
floor: the model's training FLOPs per sample (3x the forward multiply-adds, x2 FLOPs each)
divided by the machine's measured matmul throughput at the cell's GEMM shapes. It writes
``outputs/bench/bench.json``, prints a Markdown table, and ends with the lines
``bench: step/plain = F`` (the first row: the default path as chosen on this machine,
``trainer.precision=auto``, against the plain loop in float32) and ``bench: run/plain = E``
(whole runs, below).

``--switches`` adds rows for the speed switches of the default config (``compile=true``,
``trainer.precision=bf16-mixed``, ``32-true``, ``model.net.cpu_kernel=fused``), each against
a plain loop with the same setting;
``--augment PRESET`` (default ``affine_elastic``) times the default config's Lightning path
without and with that training-batch augmentation, alternated, and reports what it adds to
an epoch; ``--augment none`` skips it. ``--accelerator gpu`` runs everything on CUDA with
the data resident on the GPU (the ``trainer=gpu data.device_resident=true`` path).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from seqmnist.bench.throughput import (
    CONFIGS,
    SWITCHES,
    run,
    time_augmentation,
    time_whole_runs,
)
from seqmnist.core.internals import quiet_console
from seqmnist.core.machine import cpu_bf16_units, skip_nvml_probe_without_nvml, usable_cpus
from seqmnist.data import default_data_root
from seqmnist.training import precision


def table(rows: list[dict]) -> str:
    lines = [
        "| config | plain samples/s | lightning samples/s | lightning/plain | MFLOP/sample (train) "
        "| efficiency vs matmul |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['plain_samples_per_s']:,.0f} "
            f"| {r['lightning_samples_per_s']:,.0f} "
            f"| {r['ratio']:.3f} | {r['train_flops_per_sample'] / 1e6:.1f} "
            f"| {100 * r['efficiency_vs_matmul']:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m seqmnist.bench",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--root", default=default_data_root(), help="data root (%(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per config")
    parser.add_argument("--samples", type=int, default=6_400, help="samples timed per round")
    parser.add_argument("--configs", nargs="*", help="subset of config names (prefix match)")
    parser.add_argument("--val-size", type=int, default=5000, help="as data.val_size")
    parser.add_argument(
        "--switches", action="store_true", help="also time the compile and bf16-mixed switches"
    )
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--run-epochs", type=int, default=1, help="epochs of each whole run (the run/plain row)"
    )
    parser.add_argument(
        "--run-rounds",
        type=int,
        default=3,
        help="alternating whole-run rounds (0: no run/plain row)",
    )
    parser.add_argument(
        "--augment",
        default="affine_elastic",
        help="augment= preset timed on the default run (none: skip)",
    )
    parser.add_argument("--out", default="outputs/bench/bench.json")
    args = parser.parse_args(argv)
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: no CUDA device is visible to torch on this machine")
    skip_nvml_probe_without_nvml()
    quiet_console()

    pool = CONFIGS + SWITCHES if args.switches else CONFIGS
    wanted = args.configs or [c.name for c in pool]
    configs = [c for c in pool if any(c.name.startswith(p) for p in wanted)]
    if not configs:
        parser.error(
            f"--configs {' '.join(wanted)}: no such config; known: "
            f"{', '.join(c.name for c in CONFIGS + SWITCHES)}"
        )
    rows = run(configs, args.rounds, args.samples, args.root, args.val_size, args.accelerator)
    augment = None
    if args.augment != "none":
        augment = time_augmentation(
            args.augment, args.rounds, args.samples, args.root, args.val_size, args.accelerator
        )
    whole = None
    if args.run_rounds > 0 and args.accelerator == "cpu":
        whole = time_whole_runs(args.root, args.run_epochs, args.run_rounds, args.val_size)
    report = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "cpu_bf16_units": cpu_bf16_units(),
            "precision": precision.choose("auto", args.accelerator),
            "cpus": usable_cpus(),
            "processor": platform.processor() or platform.machine(),
            "accelerator": args.accelerator,
            "gpu": torch.cuda.get_device_name(0) if args.accelerator == "gpu" else None,
            "torch": torch.__version__,
        },
        "rounds": args.rounds,
        "results": rows,
        "augment": augment,
        "whole_run": whole,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"CPU bf16 units: {cpu_bf16_units() or 'none'}; the default path trains in "
        f"{precision.choose('auto', args.accelerator)} here\n"
    )
    print(table(rows))
    if augment is not None:
        print(
            f"\n{augment['name']}, {args.rounds} alternating rounds: "
            f"{augment['without_samples_per_s']:,.0f} samples/s without, "
            f"{augment['with_samples_per_s']:,.0f} with (x{augment['ratio']:.3f}): "
            f"+{augment['epoch_seconds_added']:.2f} s on a "
            f"{augment['epoch_seconds_without']:.1f} s epoch"
        )
    if whole is not None:
        print(
            f"\n{whole['name']}, {args.run_rounds} alternating rounds: plain script "
            f"{whole['plain_samples_per_s']:,.0f} samples/s, python -m seqmnist.train "
            f"{whole['run_samples_per_s']:,.0f} samples/s"
        )
    print(f"\nwrote {out}")
    print(f"bench: step/plain = {rows[0]['ratio']:.3f}")
    if whole is not None:
        print(f"bench: run/plain = {whole['ratio']:.3f}")


if __name__ == "__main__":
    main()
