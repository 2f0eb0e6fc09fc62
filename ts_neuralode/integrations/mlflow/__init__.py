"""MLflow: run tracking of a fit (:mod:`.tracking`), the batched client calls (:mod:`.io`), the fitted model
logged as a pyfunc model (:mod:`.logged_model`) and the pyfunc class that serves it (:mod:`.pyfunc`)."""
