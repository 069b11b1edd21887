"""Unmark pipeline steps: plain functions over the catalog, the settings object and the CLI."""
