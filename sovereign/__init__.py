"""The `sovereign` command line; each subcommand delegates to one of the packages."""
