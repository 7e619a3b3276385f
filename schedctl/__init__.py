"""schedctl: the command-line client of schedd (a thin D-Bus client)."""
