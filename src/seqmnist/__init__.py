"""seqmnist: MNIST read as sequences by recurrent networks, with Lightning and Hydra."""

__version__ = "0.1.0"
