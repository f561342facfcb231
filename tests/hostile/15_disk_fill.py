# uses: bypass
# expect: not-passed
# Fill the disk: one huge file, then many files, in the working directory and in /tmp.
import os
total = 0
for d in (".", "/tmp", "/dev/shm", "/"):
    for i in range(100000):
        try:
            with open(os.path.join(d, f"fill{i}"), "wb") as fh:
                for _ in range(64):
                    fh.write(b"\0" * (1 << 20))
                    total += 1 << 20
        except OSError:
            break
print("wrote MiB", total >> 20)
raise SystemExit(1 if total else 2)
