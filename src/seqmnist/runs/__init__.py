"""Runs: what training leaves behind and what is made from it.

``rundir`` reads and writes a run directory (config, ``metrics.json``), ``resume`` continues a
stopped run, ``checkpoints`` loads a trained model back, ``evaluation`` computes and writes a
test-set evaluation, ``aggregate`` and ``tables`` are the one mean +- std and the one
Markdown/CSV writer behind ``sweep_report`` (one sweep) and ``experiments`` (the README's
results table), ``plots`` draws the figures, ``sweep_callback`` closes a multirun.
"""
