# uses: bypass
# The user's home: the marker file, dotfiles, other homes.
import glob, os
for p in [CFG["home_marker"], os.path.expanduser("~/.bash_history"), "/root/.ssh/id_rsa"] + glob.glob(
        CFG["home"] + "/.*") + glob.glob("/home/*/*") + glob.glob("/root/*"):
    try:
        print(p, open(p).read()[:1000])
    except OSError as e:
        print("no", p, e)
for d in (CFG["home"], "/root", "/home"):
    try:
        print(d, os.listdir(d))
    except OSError as e:
        print("no", d, e)
