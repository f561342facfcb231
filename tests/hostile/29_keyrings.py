# uses: bypass
# The kernel keyrings: read every key of the session/user/process keyrings (the test puts the
# secret in its own session keyring), and the key the test added, by its id.
import ctypes, platform
NR = {"x86_64": 250, "aarch64": 219}.get(platform.machine())
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buf = ctypes.create_string_buffer(65536)
ids = set(CFG.get("key_ids", []))
for spec in (-1, -2, -3, -4, -5, -6, -7):
    n = libc.syscall(NR, 11, ctypes.c_int(spec), buf, 65536)  # KEYCTL_READ a keyring: its key ids
    if n > 0:
        ids.update(int.from_bytes(buf.raw[i:i + 4], "little") for i in range(0, min(n, 65536), 4))
for k in sorted(ids):
    m = libc.syscall(NR, 11, k, buf, 65536)
    print("key", k, m, ctypes.get_errno(), buf.raw[:max(0, min(m, 200))])
    print("search", libc.syscall(NR, 10, ctypes.c_int(-3), b"user", b"dpad_hostile", 0))
