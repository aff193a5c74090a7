"""The offline CLI and its Ray batch mode."""
