"""Models: the recurrent network (``nets``), its faster CPU GRU training pass (``cpu_gru``)
and the LightningModule that trains it (``module``)."""

from seqmnist.models.module import SeqClassifier
from seqmnist.models.nets import CELLS, RecurrentClassifier, count_parameters, describe

__all__ = ["CELLS", "RecurrentClassifier", "SeqClassifier", "count_parameters", "describe"]
