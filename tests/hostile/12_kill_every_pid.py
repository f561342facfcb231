# uses: bypass
# Walk the whole pid space with SIGKILL (pidfd as well where the kernel has it).
import os, signal
me = os.getpid()
hits = 0
for pid in range(1, 70000):
    if pid == me:
        continue
    try:
        os.kill(pid, signal.SIGKILL)
        hits += 1
    except OSError:
        pass
try:
    fd = os.pidfd_open(CFG["parent_pid"])
    signal.pidfd_send_signal(fd, signal.SIGKILL)
    print("pidfd kill sent")
except (OSError, AttributeError) as e:
    print("no pidfd", e)
print("signalled", hits)
