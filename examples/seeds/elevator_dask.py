"""The same elevator on Dask: the runner is chosen by name (needs `baton-core[dask]`)."""

import time

from baton import flow, get_runner, task, wait


@task
def stop_at_floor(floor: int):
    print(f"elevator moving to floor {floor}")
    # `floor` hundredths of a second rather than `floor` seconds, so the ride takes a moment.
    time.sleep(floor / 100)
    print(f"elevator stops on floor {floor}")


# `task_runner="dask"` alone starts a LocalCluster with its dashboard on port 8787;
# ":0" puts it on a free port, so that the example runs beside any other Dask cluster.
@flow(task_runner=get_runner("dask", cluster_kwargs={"dashboard_address": ":0"}))
def elevator():
    floors = []
    for floor in range(10, 0, -1):
        floors.append(stop_at_floor.submit(floor))
    wait(floors)


if __name__ == "__main__":
    elevator()
