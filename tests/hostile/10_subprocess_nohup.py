# uses: bypass
# subprocess with a new session, nohup and a shell, writing outside on the way.
import subprocess, sys
t = CFG["targets"][0]
procs = []
for argv in (["sh", "-c", f"echo x > {t}; sleep 60 # {CFG['marker']}"],
             ["nohup", sys.executable, "-c", "import time; time.sleep(60)", CFG["marker"]],
             ["setsid", "-f", sys.executable, "-c", "import time; time.sleep(60)", CFG["marker"]]):
    try:
        procs.append(subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        print("started", argv[0])
    except Exception as e:
        print("no", argv[0], e)
print("parent exits")
