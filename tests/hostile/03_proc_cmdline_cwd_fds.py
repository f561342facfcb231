# uses: bypass
# Other processes' cmdline, cwd, root, fds, maps and memory.
import os
for pid in {CFG["parent_pid"], CFG["canary_pid"], os.getppid(), 1}:
    base = f"/proc/{pid}"
    for name in ("cmdline", "maps", "status", "mountinfo"):
        try:
            print(name, open(f"{base}/{name}", "rb").read()[:2000])
        except OSError as e:
            print("denied", name, e)
    for link in ("cwd", "root", "exe"):
        try:
            print(link, os.readlink(f"{base}/{link}"), os.listdir(f"{base}/{link}"))
        except OSError as e:
            print("denied", link, e)
    try:
        for fd in os.listdir(f"{base}/fd"):
            print("fd", fd, os.readlink(f"{base}/fd/{fd}"))
            try:
                print(open(f"{base}/fd/{fd}", "rb").read(2000))
            except OSError as e:
                print("denied fd", e)
    except OSError as e:
        print("denied fds", e)
    try:
        with open(f"{base}/mem", "rb") as fh:
            print("mem", fh.read(100))
    except OSError as e:
        print("denied mem", e)
