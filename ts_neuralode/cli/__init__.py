"""The command line ``ts-neuralode``: thin shells that parse options, call the API and print (:mod:`.main`)."""

from ts_neuralode.cli.main import main

__all__ = ["main"]
