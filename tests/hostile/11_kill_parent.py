# uses: bypass
# Kill the parent, the test's canary, the whole process group and every process (kill -1).
import os, signal
for pid in (os.getppid(), CFG["parent_pid"], CFG["canary_pid"]):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
            print("signalled", pid)
        except OSError as e:
            print("no", pid, e)
for fn in (lambda: os.killpg(os.getpgid(CFG["parent_pid"]), signal.SIGKILL),
           lambda: os.killpg(0, signal.SIGTERM)):
    try:
        fn()
    except OSError as e:
        print("no", e)
try:
    if os.fork() == 0:   # a child does kill(-1): everything it may signal
        os.kill(-1, signal.SIGKILL)
        os._exit(0)
except OSError as e:
    print("no fork", e)
os.kill(-1, signal.SIGKILL)
