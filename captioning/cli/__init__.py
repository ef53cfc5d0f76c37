"""The `captioner` command (`main`) and its subcommands, one module each."""
