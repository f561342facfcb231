"""`dpad generate` and `dpad eval` print their results and nothing else: no library warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from dpad.cli import main
fast = ["--gen-length", "32", "--block-length", "32", "--threshold", "0.9", "--threads", "1"]
rc = main(["generate", "--prompt", "Tom has 3 apples and buys 4 more. How many apples does he have?", *fast])
print("=== eval", file=sys.stderr)
rc = rc or main(["eval", "--task", "arith", "--limit", "1", "--no-progress", "--out", sys.argv[1], *fast])
sys.exit(rc)
"""


def test_generate_and_eval_print_no_transformers_warning(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS"))}
    env["HF_HUB_OFFLINE"] = "1"
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    gen_err, eval_err = p.stderr.split("=== eval\n")
    # generate: one stats line on stderr; eval: the paths of the files it wrote
    # the fast method by default, with the flags on top (threshold 0.9 instead of the embedded 0.99)
    assert gen_err.startswith("[parallel+prefix+dpad-threshold0.9] nfe=") and gen_err.count("\n") == 1, gen_err
    assert all(line.split(":")[0] in ("samples", "summary", "table") for line in eval_err.strip().splitlines()), eval_err
    for text in (p.stderr, p.stdout):
        assert "warn" not in text.lower() and "transformers" not in text.lower() and "model of type" not in text
