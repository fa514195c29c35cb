"""`python -m emo_r3.graphs.cli` = `emo-r3`."""

from emo_r3.graphs.cli.main import main

main()
