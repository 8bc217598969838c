"""`python -m stratum_core` is the `stratum` command."""

from stratum_core.cli import console_main

console_main()
