#!/usr/bin/env python3
"""Measure server memory with N idle connections that have sent EHLO.

Usage: idle_connections.py PID HOST PORT N
Prints the server's RSS before and after (from /proc/PID/status), then closes everything.
"""
import asyncio
import resource
import sys


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one(host, port, ready, hold, failed):
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError:
        failed.append(1)
        return
    await r.readline()
    w.write(b"EHLO idle.test\r\n")
    await w.drain()
    while True:
        line = await r.readline()
        if not line or line[3:4] == b" ":
            break
    ready.append(1)
    await hold.wait()
    w.close()


async def main():
    pid, host, port, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    before = rss_kib(pid)
    ready, hold, failed = [], asyncio.Event(), []
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(host, port, ready, hold, failed)))
        if i % 200 == 199:
            # Let the server's accept backlog drain instead of overflowing it.
            while len(ready) + len(failed) < i - 400:
                await asyncio.sleep(0.01)
    for _ in range(600):
        if len(ready) + len(failed) >= n:
            break
        await asyncio.sleep(0.1)
    after = rss_kib(pid)
    print(f"connections after EHLO: {len(ready)} (failed: {len(failed)})")
    print(f"server RSS: before {before} KiB, after {after} KiB, delta {(after - before) / 1024:.1f} MiB "
          f"({(after - before) * 1024 / max(len(ready), 1):.0f} bytes per connection)")
    hold.set()
    await asyncio.gather(*tasks, return_exceptions=True)


asyncio.run(main())
