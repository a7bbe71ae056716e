#!/usr/bin/env python3
"""A fake journald for the tests. Run it inside a private mount namespace with a tmpfs on
/run/systemd (tracing-journald hard-codes /run/systemd/journal/socket):

    fake_journald.py OUT.jsonl PIDFILE STDERR_FILE -- PROGRAM ARG...

Binds the native-protocol datagram socket, starts PROGRAM with stderr on STDERR_FILE and
JOURNAL_STREAM set to that file's dev:ino (so the program knows stderr "is the journal"),
writes its pid to PIDFILE, and appends every entry it receives to OUT.jsonl as a JSON object
(both field forms: KEY=VALUE\\n and KEY\\n<le64 length><bytes>\\n; a memfd passed with
SCM_RIGHTS is read too). When the program exits, a last line {"_EXIT": code} is written.
"""
import array
import json
import os
import select
import socket
import struct
import subprocess
import sys

PATH = "/run/systemd/journal/socket"


def decode(buf):
    entry, i = {}, 0
    while i < len(buf):
        nl = buf.find(b"\n", i)
        if nl < 0:
            raise ValueError("truncated field")
        line = buf[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k = line
            (n,) = struct.unpack_from("<Q", buf, nl + 1)
            start = nl + 9
            v = buf[start:start + n]
            if buf[start + n:start + n + 1] != b"\n":
                raise ValueError("binary field not followed by a newline")
            i = start + n + 1
        entry[k.decode()] = v.decode(errors="replace")
    return entry


def receive(sock, out):
    try:
        data, anc, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
    except BlockingIOError:
        return False
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
            for fd in fds:
                with os.fdopen(fd, "rb") as f:
                    f.seek(0)
                    data += f.read()
    if data:
        try:
            entry = decode(data)
        except ValueError as e:
            entry = {"_DECODE_ERROR": str(e), "_RAW": data.decode(errors="replace")}
        out.write(json.dumps(entry) + "\n")
        out.flush()
    return True


def main():
    out_path, pidfile, stderr_path = sys.argv[1:4]
    prog = sys.argv[sys.argv.index("--") + 1:]
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(PATH)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.setblocking(False)
    with open(stderr_path, "wb") as err, open(out_path, "a") as out:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        child = subprocess.Popen(prog, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(child.pid))
        os.rename(pidfile + ".tmp", pidfile)
        while child.poll() is None:
            if select.select([sock], [], [], 0.1)[0]:
                while receive(sock, out):
                    pass
        while receive(sock, out):
            pass
        out.write(json.dumps({"_EXIT": child.returncode}) + "\n")


if __name__ == "__main__":
    main()
