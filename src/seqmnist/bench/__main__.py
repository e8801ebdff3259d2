"""``python -m seqmnist.bench``: see :mod:`seqmnist.bench.cli`."""

from seqmnist.bench.cli import main

main()
