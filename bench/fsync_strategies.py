#!/usr/bin/env python3
"""Compares ways to make many small files durable on this machine's filesystem, which decided
the spool's group-commit design: one syncfs per batch, fdatasync one file at a time, or
fdatasync from many threads at once (what GroupCommit does).

Usage: fsync_strategies.py [DIR] (default: a fresh directory under ./tern-fsync-bench)
"""
import ctypes
import os
import sys
import threading
import time

d = sys.argv[1] if len(sys.argv) > 1 else "./tern-fsync-bench"
os.makedirs(d, exist_ok=True)
data = b"x" * 1100
N = 2000
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def write(i):
    fd = os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    os.write(fd, data)
    return fd


t = time.time()
for b in range(N // 20):
    fds = [write(b * 20 + i) for i in range(20)]
    dfd = os.open(d, os.O_RDONLY)
    libc.syncfs(dfd)
    for fd in fds:
        os.close(fd)
    os.fsync(dfd)
    os.close(dfd)
print(f"syncfs per batch of 20:       {N / (time.time() - t):8.0f} files/s")

t = time.time()
for i in range(N):
    fd = write(i)
    os.fdatasync(fd)
    os.close(fd)
print(f"fdatasync, one at a time:     {N / (time.time() - t):8.0f} files/s")


def worker(k):
    for i in range(k, N, 20):
        fd = write(i)
        os.fdatasync(fd)
        os.close(fd)


t = time.time()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(20)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print(f"fdatasync from 20 threads:    {N / (time.time() - t):8.0f} files/s")
for i in range(N):
    os.unlink(f"{d}/f{i}")
os.rmdir(d)
