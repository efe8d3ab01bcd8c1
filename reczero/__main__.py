"""`python -m reczero` is the same entry point as the `reczero` console script."""

from reczero.cli import main

if __name__ == "__main__":
    main()
