# sys.modules.pop("posix") + importlib.reload(os): the real posix functions are back.
import importlib, sys
for m in ("posix", "os", "_io", "io"):
    sys.modules.pop(m, None)
import posix
import os
os = importlib.reload(os)
for t in CFG["targets"]:
    try:
        fd = posix.open(t, posix.O_WRONLY | posix.O_CREAT, 0o644)
        posix.write(fd, b"posix")
        posix.close(fd)
        print("WROTE", t)
    except OSError as e:
        print("no", t, e)
    try:
        posix.mkdir(t + ".d")
        print("WROTE dir", t)
    except OSError as e:
        print("no dir", e)
    try:
        posix.symlink("/etc/passwd", t + ".lnk")
        print("WROTE link", t)
    except OSError as e:
        print("no link", e)
