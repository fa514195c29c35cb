"""Evaluation on the standard visual-emotion benchmarks: `datasets` (loaders for their on-disk layouts), the
graph or paper-parity `runner`, `metrics`, `report` (Markdown + HTML), `compare` (significance of a difference), and
the `emo-r3 eval` command."""
