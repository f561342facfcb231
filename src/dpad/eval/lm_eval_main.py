"""``python -m dpad.eval.lm_eval_main ARGS``: lm-eval's command line with the ``dpad`` model registered.

lm-eval 0.4.x only knows the models in its own registry (no plugin entry points), so this
launcher imports :mod:`dpad.eval.lm_eval_model` (which registers ``dpad``) and then hands the
arguments to lm-eval's CLI unchanged, e.g.::

    python -m dpad.eval.lm_eval_main --model dpad \\
        --model_args method=parallel+prefix+dpad,gen_length=256 --tasks gsm8k --limit 20

Works under ``torchrun``/``accelerate launch`` too (samples are sharded across ranks by lm-eval).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        import lm_eval.__main__ as lm_eval_cli
    except ImportError:
        print("dpad: error: lm-eval is not installed (pip install 'dpad-dllm[eval]' or pip install lm-eval)",
              file=sys.stderr)
        return 2
    from . import lm_eval_model  # noqa: F401  (registers the "dpad" model)

    saved = list(sys.argv)
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        lm_eval_cli.cli_evaluate()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
