"""The ground floor: file writes that survive a kill (:mod:`.atomic`), torch's thread count (:mod:`.threads`) and
the quieting of third-party noise (:mod:`.noise`). Imports nothing else of the package but
:mod:`ts_neuralode.errors`."""
