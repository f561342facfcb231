# uses: bypass
# The old escape: sys.modules.pop("posix") brings fork back; a setsid grandchild tries to outlive the run.
import os, sys
SLEEPER = [sys.executable, "-c", "import time\nfor _ in range(600): time.sleep(0.1)", CFG["marker"]]
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, SLEEPER)
    os._exit(0)
os.waitpid(pid, 0)
print("forked", pid)
