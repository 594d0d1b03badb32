"""One module per CLI verb beyond prune/eval/inspect (see compress.cli.COMMANDS)."""
