"""Export steps: a torch checkpoint to portable runtimes."""
