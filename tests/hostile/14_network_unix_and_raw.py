# uses: bypass
# Abstract unix socket of the parent, netlink and raw sockets, bringing interfaces up.
import socket, subprocess
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    s.connect("\0" + CFG["unix_name"])
    s.sendall(b"LEAK")
    print("CONNECTED unix")
except OSError as e:
    print("no unix", e)
for args in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_PACKET, socket.SOCK_RAW, 0)):
    try:
        socket.socket(*args)
        print("raw socket opened", args)
    except OSError as e:
        print("no raw", e)
for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr"]):
    try:
        print(subprocess.run(cmd, capture_output=True, text=True, timeout=2))
    except Exception as e:
        print("no", cmd, e)
try:
    s = socket.create_connection(("127.0.0.1", CFG["port"]), timeout=1)
    print("CONNECTED after ip")
except OSError as e:
    print("no", e)
