# uses: bypass
# expect: not-passed
# Every process it can create allocates as much memory as it may: the total stays bounded by
# the process limit times the per-process limit.
import os, sys
kids = 0
for _ in range(64):
    try:
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c",
                     "b = []\ntry:\n    while True:\n        b.append(bytearray(32 << 20))\nexcept MemoryError:\n"
                     "    pass\nimport time\ntime.sleep(60)", CFG["marker"]])
        kids += 1
    except OSError:
        break
print("children", kids)
sys.exit(1)
