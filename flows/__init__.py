"""Prefect flows and tasks that wire the pipeline steps together (no business logic here)."""
