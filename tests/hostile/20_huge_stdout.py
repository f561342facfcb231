# expect: not-passed
# 200 MB to stdout and stderr.
import sys
chunk = "y" * 65536
for _ in range(3200):
    sys.stdout.write(chunk)
    sys.stderr.write(chunk)
