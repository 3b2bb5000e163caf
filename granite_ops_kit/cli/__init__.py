"""The `gkit` command line: parse, call the core, print. No logic of its own."""
