# uses: bypass
# Regain privileges: capabilities, setuid 0, chown/chmod of bound files, hostname, raw devices,
# setuid binaries (su, mount, passwd), and the kernel's knobs in /proc/sys.
import os, subprocess
print(open("/proc/self/status").read())
for fn in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.chown("/usr/bin", 65534, 65534),
           lambda: os.chmod("/usr/bin/env", 0o4777), lambda: open("/dev/mem", "rb").read(16),
           lambda: open("/proc/sys/kernel/hostname", "w").write("pwned"),
           lambda: open("/proc/sysrq-trigger", "w").write("b"),
           lambda: open("/proc/sys/vm/drop_caches", "w").write("3")):
    try:
        fn()
        print("PRIVILEGED op succeeded")
    except Exception as e:
        print("no", type(e).__name__, e)
for cmd in (["su", "-c", "id"], ["mount", "-t", "tmpfs", "x", "/tmp"], ["passwd", "-S", "root"], ["id"]):
    try:
        print(subprocess.run(cmd, capture_output=True, text=True, timeout=2, stdin=subprocess.DEVNULL))
    except Exception as e:
        print("no", cmd, e)
