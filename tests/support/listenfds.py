#!/usr/bin/env python3
"""Fake systemd socket activation for the tests (what a .socket unit does).

    listenfds.py [--names N1:N2] [--mode 0640] PATH... -- PROGRAM ARG...

Binds a listening AF_UNIX stream socket at each PATH (in that order), puts them at
fds 3, 4, ... and execs PROGRAM with LISTEN_FDS, LISTEN_PID (= this pid, which exec keeps:
std::process::Command cannot set the child's own pid) and, with --names, LISTEN_FDNAMES.
"""
import os
import socket
import sys


def main():
    args = sys.argv[1:]
    sep = args.index("--")
    opts, prog = args[:sep], args[sep + 1:]
    names, mode, paths = None, 0o640, []
    i = 0
    while i < len(opts):
        if opts[i] == "--names":
            names, i = opts[i + 1], i + 2
        elif opts[i] == "--mode":
            mode, i = int(opts[i + 1], 8), i + 2
        else:
            paths.append(opts[i])
            i += 1
    socks = []
    for p in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(p)
        os.chmod(p, mode)
        s.listen(64)
        socks.append(s)
    # Move them out of the way first, so that dup2 into 3.. never clobbers one of them.
    high = [os.dup(s.fileno()) for s in socks]
    for s in socks:
        s.close()
    for n, fd in enumerate(high):
        os.dup2(fd, 3 + n, inheritable=True)
    for fd in high:
        if fd >= 3 + len(high):
            os.close(fd)
    env = dict(os.environ)
    env["LISTEN_FDS"] = str(len(high))
    env["LISTEN_PID"] = str(os.getpid())
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    else:
        env.pop("LISTEN_FDNAMES", None)
    os.execve(prog[0], prog, env)


if __name__ == "__main__":
    main()
