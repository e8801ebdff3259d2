"""Training mechanics around Lightning's Trainer: config checks (``config``), building the
run's objects (``build``) and surviving faults (``faults``)."""
