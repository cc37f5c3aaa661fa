"""The command line's parts: argument parsing, the commands, their console and formatting.

`resilience_kit.cli` is the public entry point (``resilience-kit``); these modules are
private.
"""
