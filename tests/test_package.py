import subprocess
import sys

import pytest


@pytest.mark.slow
def test_solvers_import_nothing_from_lightning_or_the_package():
    """The solver core stands alone (DESIGN.md): importing it must not pull Lightning or other layers."""
    code = (
        "import sys, ts_neuralode.solvers as s;"
        "bad=[m for m in sys.modules if m.startswith(('lightning','pytorch_lightning','mlflow','pandas',"
        "'ts_neuralode.data','ts_neuralode.models','ts_neuralode.training'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
