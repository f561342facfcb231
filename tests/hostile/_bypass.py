# Shared prelude (prepended by the test to programs that ask for it): undo the Python guard
# so that only the OS boundary is left. Each trick is tried; failures are ignored.
import builtins, gc, importlib, sys


def _real_open():
    cells = getattr(builtins.open, "__closure__", None) or ()
    for cell in cells:
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        if callable(v) and getattr(v, "__name__", "") == "open" and v is not builtins.open:
            return v
    import _io
    return _io.open


REAL_OPEN = _real_open()
builtins.open = REAL_OPEN
for _name in ("posix", "os", "subprocess", "_posixsubprocess", "socket", "_socket", "ctypes", "_ctypes",
              "signal", "multiprocessing"):
    sys.modules.pop(_name, None)
import posix  # noqa: E402  a fresh module object: the real fork/kill/exec are back
import os  # noqa: E402
os = importlib.reload(os)
import socket  # noqa: E402
import subprocess  # noqa: E402
