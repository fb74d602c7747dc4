"""`python -m boostray ...` is the `boostray` command."""

from boostray.cli import run_command

if __name__ == "__main__":
    run_command()
