"""Data: raw IDX files -> tensors -> sequence views -> batches; and pictures -> 28x28 digits.

``idx`` reads and checks the files, ``sequences`` lays images out as sequences, ``sampler``
orders the training set, ``datamodule`` serves batches to Lightning, ``images`` turns any
digit picture into an MNIST-like 28x28 image.
"""

from seqmnist.data.datamodule import SeqMNISTDataModule, SequenceDataset
from seqmnist.data.idx import DATASETS, PIXELS, default_data_root, load_split
from seqmnist.data.sequences import SEQUENCE_MODES, Layout, sequence_view, step_size, to_inputs

__all__ = [
    "DATASETS",
    "Layout",
    "PIXELS",
    "SEQUENCE_MODES",
    "SeqMNISTDataModule",
    "SequenceDataset",
    "default_data_root",
    "load_split",
    "sequence_view",
    "step_size",
    "to_inputs",
]
