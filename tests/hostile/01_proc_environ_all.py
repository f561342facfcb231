# uses: bypass
# Read every /proc/<pid>/environ and /proc/<pid>/task/<tid>/environ that is visible, and the
# parent's by its host pid.
import os
found = []
pids = [p for p in os.listdir("/proc") if p.isdigit()] + [str(CFG["parent_pid"]), str(CFG["canary_pid"]), "1"]
for pid in pids:
    paths = [f"/proc/{pid}/environ"]
    try:
        paths += [f"/proc/{pid}/task/{t}/environ" for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        pass
    for p in paths:
        try:
            with open(p, "rb") as fh:
                found.append(fh.read().decode(errors="replace"))
        except OSError as e:
            print("denied", p, e.errno)
print("\n".join(found))
print(os.environ)
