# shellcheck shell=bash
# free_port: prints a TCP port free on loopback, taken below the kernel's ephemeral range
# (ip_local_port_range). A port handed out by bind(:0) and released is handed out again to the
# outgoing connections and port-0 listeners of everything else running, and one of them may take it
# before the daemon it was meant for binds it.
free_port() {
  python3 - <<'PY'
import random, socket
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        start = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    start = 32768
low = min(10000, start - 1000)
ports = list(range(low, start))
random.shuffle(ports)
for port in ports:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port on loopback below the ephemeral range")
PY
}
