"""Print how many CPU cores are idle now (at least 1): the thread count scripts/quickstart.sh gives torch.

Read from /proc/stat over one second, since the load average lags by a minute. torch's threads on cores
that another job keeps busy run several times slower than fewer threads (docs/control.md). Without
/proc (not Linux) it prints 1, the choice that is never badly wrong.
"""
import os
import time


def cpu_times():
    """(idle, total) jiffies over all cores."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)  # idle + iowait


def idle_cores(seconds: float = 1.0) -> int:
    try:
        idle0, total0 = cpu_times()
        time.sleep(seconds)
        idle1, total1 = cpu_times()
    except OSError:
        return 1
    return max(1, round(os.cpu_count() * (idle1 - idle0) / max(1, total1 - total0)))


if __name__ == "__main__":
    print(idle_cores())
