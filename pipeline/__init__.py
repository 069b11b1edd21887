"""Unmark's pipeline steps: plain functions over the catalog, the blob store and the settings
object (``config.Settings``, a room per stage). The command line (``flows/cli*.py``) and the
Prefect flows (``flows/``) call them; nothing here imports either.

The life of an image, step by step:

- ``scrape/`` crawls seeds into the catalog (fetch, guard, robots, extract, render, write);
  ``importer`` adds local files the same way;
- ``dedup`` folds near duplicates into groups (``perceptual`` hashes, ``hashindex`` search);
- ``triage`` labels each image clean / watermarked / uncertain with the promoted detector;
- ``train`` fits a remover on the clean pool; ``pretrain`` and ``pretrain_detector`` train the
  models that ship in ``model/weights/``; ``evaluate`` scores a remover on a benchmark protocol;
- ``clean`` runs the promoted remover over the watermarked pool (``clean_decode`` feeds it,
  ``clean_metrics`` records each result); ``clean_files`` does a folder in one command and
  ``writeback`` writes each output in its input's own format;
- ``report/``, ``catalog_cli`` and ``summaries`` show what the catalog holds.

Shared rooms: ``registry`` (which model a step uses: load, register, promote), ``images`` (the one
guarded open of untrusted bytes), ``workspace`` (catalog and store for one unit of work),
``stopping`` (SIGTERM and Ctrl-C between batches).

Not a stage: ``demo/``, the fixture ``unmark demo`` and the tests run the stages on (its sample
site and server, the review of triage against the site's truth, the demo's environment).
"""
