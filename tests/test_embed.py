"""Embedding new text with a trained run, from the command line and from Python."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def test_embed_cli_writes_npy(tiny_run, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("One story.\n<|endoftext|>\nAnother story.\n")
    result = subprocess.run([sys.executable, "-m", "tjepa.embed", str(tiny_run), str(texts)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "texts.npy").shape == (2, 32)


def test_embed_texts_is_reachable_after_the_embed_command_module_is_imported(tiny_run):
    import tjepa
    import tjepa.embed  # the command's module must not shadow the function

    vectors = tjepa.embed_texts(tiny_run, ["Lily found a red ball."])
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
    assert callable(tjepa.embed.main)
