"""The top layer: Prefect flows and the ``unmark`` command line, wiring the pipeline steps
together (no business logic here).

- Flows: ``ingest`` (scrape, dedup, triage; ``mapped`` runs its CPU-heavy parts on Dask),
  ``train``, ``clean``, ``nightly`` (ingest then clean) and ``demo``; ``runtime`` opens the
  settings and workspace for a task, ``artifacts`` writes what a person reads after a run.
  ``prefect.yaml`` deploys them.
- Command line: ``cli`` (the Typer app's commands), ``cli_base`` (what every command shares: the
  consoles, settings, exit codes), ``cli_clean``, ``cli_check`` and ``cli_models``.
"""
