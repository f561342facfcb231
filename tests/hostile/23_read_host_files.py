# uses: bypass
# Secrets in files the parent can read: a file in the test's tree, the repo, /etc/shadow.
import os
for p in (CFG["secret_file"], CFG["repo_file"], "/etc/shadow", "/etc/passwd", "/proc/1/environ",
          "/proc/self/environ", "/proc/self/mountinfo"):
    try:
        print(p, open(p).read()[:3000])
    except OSError as e:
        print("no", p, e)
for d in (CFG["tree"], os.path.dirname(CFG["repo_file"])):
    try:
        print(d, os.listdir(d))
    except OSError as e:
        print("no", d, e)
