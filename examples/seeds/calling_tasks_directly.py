"""Calling a task directly runs it at once and blocks until it is done."""

import time

from baton import task


@task
def stop_at_floor(floor: int):
    print(f"elevator moving to floor {floor}")
    time.sleep(floor)
    print(f"elevator stops on floor {floor}")


stop_at_floor(0.1)  # blocks for 0.1 seconds
stop_at_floor(0.2)  # blocks for 0.2 seconds
stop_at_floor(0.3)  # blocks for 0.3 seconds
