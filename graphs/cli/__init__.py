"""The `emo-r3` command line. `main` is the entry point; every subcommand module is imported only when used."""
