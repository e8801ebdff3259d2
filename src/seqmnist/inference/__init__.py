"""Using a trained model: load a checkpoint safely (``checkpoints``), one predictor over a
checkpoint or an exported file (``predictor``), ONNX/TorchScript export (``export``) and the
anytime reading of one picture (``reading``)."""
