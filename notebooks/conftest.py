"""nbval runs the notebooks in smoke mode: small data, few steps (see each 'parameters' cell)."""

import os

os.environ["TJEPA_SMOKE"] = "1"
