"""Run the ``zoo`` command from a checkout without installing the console script: ``python cli.py list``."""

import sys

from zoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
