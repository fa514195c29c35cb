"""Dataset loaders, metrics and reports for the standard visual-emotion benchmarks. Not built yet."""
