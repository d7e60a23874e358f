"""Evaluation: bits per byte, HellaSwag, GSM8K / MGSM and sample generations for any causal LM."""
