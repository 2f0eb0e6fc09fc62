"""``python -m ts_neuralode.cli``: the ``ts-neuralode`` command (what the console script runs)."""

import sys

from ts_neuralode.cli.main import main

sys.exit(main())
