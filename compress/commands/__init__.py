"""One module per CLI verb (see compress.cli.COMMANDS): HELP, add_arguments(p) and run(args), which
builds the verb's inputs from the parsed arguments and calls the library (prune, eval and inspect:
`compress.api`)."""
