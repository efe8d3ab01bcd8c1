"""`python -m reczero` is the same entry point as the `reczero` console script."""

from reczero.cli import console

if __name__ == "__main__":
    raise SystemExit(console())
