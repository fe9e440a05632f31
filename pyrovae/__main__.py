"""``python -m pyrovae``: the ``pyrovae`` command, also as torchrun's ``-m pyrovae`` target."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
