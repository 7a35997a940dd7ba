"""``python -m transformers_momentum``: the ``transformers-momentum`` command, also as a module for launchers
(``torchrun -m transformers_momentum analyze ...``, ``accelerate launch -m transformers_momentum analyze ...``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
