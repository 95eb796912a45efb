"""One module per checkpoint format, each exposing FORMAT: how to detect, read and write it."""
