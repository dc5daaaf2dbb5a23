"""Launcher, supervisor and the `autoglm` command-line tools."""
