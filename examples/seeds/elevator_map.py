"""`.map` submits one run per floor."""

import time

from baton import flow, task, wait


@task
def stop_at_floor(floor: int):
    print(f"elevator moving to floor {floor}")
    # `floor` hundredths of a second rather than `floor` seconds, so the ride takes a moment.
    time.sleep(floor / 100)
    print(f"elevator stops on floor {floor}")


@flow
def elevator():
    floors = list(range(10, 0, -1))
    floors = stop_at_floor.map(floors)
    wait(floors)


if __name__ == "__main__":
    elevator()
