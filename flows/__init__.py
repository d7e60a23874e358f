"""Prefect flows: the DAGs Forja runs, composed from tasks; and the `forja` command."""
