# uses: bypass
# ctypes back (sys.modules entries removed) and direct syscalls through libc.
import sys
for m in ("ctypes", "_ctypes"):
    sys.modules.pop(m, None)
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
SYS_kill, SYS_open, SYS_fork, SYS_setuid = 62, 2, 57, 105   # x86_64
t = CFG["targets"][0].encode()
print("kill parent", libc.syscall(SYS_kill, CFG["parent_pid"], 9), ctypes.get_errno())
print("kill canary", libc.syscall(SYS_kill, CFG["canary_pid"], 9), ctypes.get_errno())
print("open", libc.syscall(SYS_open, t, os.O_WRONLY | os.O_CREAT, 0o644), ctypes.get_errno())
print("setuid0", libc.syscall(SYS_setuid, 0), ctypes.get_errno())
print("unshare user", libc.unshare(0x10000000), ctypes.get_errno())
print("mount", libc.mount(b"none", b"/usr", b"tmpfs", 0, None), ctypes.get_errno())
print("chroot", libc.chroot(b"/proc/1/root"), ctypes.get_errno())
print("ptrace attach", libc.ptrace(16, CFG["parent_pid"], None, None), ctypes.get_errno())
if libc.syscall(SYS_fork) == 0:
    os.setsid()
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", CFG["marker"]])
