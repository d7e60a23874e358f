"""PyTorch and Lightning: architectures, training modules and the training entry point."""
