# uses: bypass
# expect: timeout
# Spinning threads that ignore every catchable signal.
import signal, threading
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, signal.SIGALRM):
    signal.signal(s, signal.SIG_IGN)


def spin():
    while True:
        pass


for _ in range(2):
    threading.Thread(target=spin, daemon=True).start()
spin()
