"""CLI command groups, one module each; lifecycle/cli.py registers them."""
