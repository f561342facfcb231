# uses: bypass
# Links from the writable directory to paths outside it.
import os
for i, t in enumerate(CFG["targets"]):
    try:
        os.symlink(t, f"s{i}")
        with open(f"s{i}", "w") as fh:
            fh.write("x")
        print("WROTE via symlink", t)
    except OSError as e:
        print("no", e)
for src in ("/usr/bin/python3", CFG["secret_file"], "/etc/passwd"):
    try:
        os.link(src, "hard")
        print("linked", src)
        os.remove("hard")
    except OSError as e:
        print("no link", e)
