"""seqmnist: MNIST read as sequences by recurrent networks, with Lightning and Hydra."""

import warnings

# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates; not ours to fix.
# Filtered here once, for every entry point that runs a Trainer (train, evaluate, bench).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

__version__ = "0.1.0"
