# uses: bypass
# expect: not-passed
# A fork bomb whose processes carry the marker in their command line (exec'ed once).
import os, sys
BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
try:
    os.execv(sys.executable, [sys.executable, "-c", BOMB, CFG["marker"]])
except OSError as e:
    print("no exec", e)
