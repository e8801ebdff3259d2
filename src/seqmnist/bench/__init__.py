"""Developer tools, outside the training code: ``python -m seqmnist.bench`` (``make bench``,
:mod:`.cli` over the timed loops of :mod:`.throughput`), the plain PyTorch yardstick
(:mod:`.plain_script`) and ``python -m seqmnist.bench.gpu_check`` (``make gpu-check``)."""
