# uses: bypass
# expect: not-passed
# Allocate far more memory than allowed: one big block, mmap, then a growing list.
import mmap
blocks = []
for size in (8 << 30, 2 << 30):
    try:
        blocks.append(bytearray(size))
    except MemoryError:
        pass
try:
    m = mmap.mmap(-1, 4 << 30)
    m[-1:] = b"x"
except (OSError, ValueError):
    pass
while True:
    blocks.append(b"x" * (64 << 20))
