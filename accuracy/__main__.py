"""`python -m accuracy`: the eval command without the sparse-serve wrapper."""

from __future__ import annotations

import argparse
import sys

from accuracy import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accuracy", description=cli.__doc__)
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
