# uses: bypass
# A classic daemon: double fork, setsid, chdir /, close fds, ignore SIGHUP/SIGTERM, then sleep.
import os, signal, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("/")
        os.umask(0)
        for fd in range(3):
            os.close(fd)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.execv(sys.executable, [sys.executable, "-c",
                 "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)",
                 CFG["marker"]])
    os._exit(0)
print("daemonized")
