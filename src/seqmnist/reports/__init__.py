"""Reports made from run directories: a test-set evaluation (``evaluation``), one sweep's table
(``sweep_report``, closed by ``sweep_callback``), the experiments table of docs/results.md
(``experiments``), the rows read from run dirs (``collect``), mean +- std (``aggregate``),
Markdown/CSV (``tables``) and the figures (``plots``)."""
