"""What a run reports about a compressed model: ``compression`` (sparsity and MACs)."""
