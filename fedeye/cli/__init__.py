"""The `fedeye` command line: thin typer commands that parse, call one domain function and print."""
