#!/usr/bin/env python3
"""Start or stop an rst stream on a live channel over FreeSWITCH's event socket.

    uuid_rst.py <uuid> [host port]      start streaming to host:port (or the default)
    uuid_rst.py <uuid> stop             stop

Plain sockets, no ESL library needed. The same from a shell:
    fs_cli -x "uuid_rst <uuid> 10.0.0.20 9527"
"""
import socket
import sys

ESL_HOST, ESL_PORT, ESL_PASSWORD = "127.0.0.1", 8021, "ClueCon"


def read_reply(sock):
    data = b""
    while b"\n\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("event socket closed")
        data += chunk
    head, _, rest = data.partition(b"\n\n")
    length = 0
    for line in head.decode().splitlines():
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    while len(rest) < length:
        rest += sock.recv(4096)
    return head.decode(), rest[:length].decode()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with socket.create_connection((ESL_HOST, ESL_PORT), timeout=5) as sock:
        read_reply(sock)  # auth/request
        sock.sendall(f"auth {ESL_PASSWORD}\n\n".encode())
        head, _ = read_reply(sock)
        if "+OK" not in head:
            sys.exit("event socket refused the password")
        sock.sendall(f"api uuid_rst {' '.join(sys.argv[1:])}\n\n".encode())
        _, body = read_reply(sock)
        print(body.strip())
        sys.exit(0 if body.startswith("+OK") else 1)


if __name__ == "__main__":
    main()
