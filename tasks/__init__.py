"""Units of work: plain functions that do each stage's work, plus thin Prefect wrappers."""
