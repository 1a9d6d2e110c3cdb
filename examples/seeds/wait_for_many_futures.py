"""`wait(futures)` waits for many runs at once."""

from baton import flow, task, wait


@task
def cool_task():
    return "sup"


@flow
def my_workflow():
    futures = [cool_task.submit() for _ in range(10)]
    wait(futures)


if __name__ == "__main__":
    my_workflow()
