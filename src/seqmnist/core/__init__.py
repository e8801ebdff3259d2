"""What every layer may use: our error types (``errors``), the rule behind each config value
(``checks``), the run directory's layout (``rundir``), where the project's files are
(``project``), machine facts (``machine``) and the few library internals read (``internals``)."""
