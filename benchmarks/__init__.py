"""mta_ext benchmarks: every kernel against the pure-PyTorch reference, in the same run."""
