"""`.wait()` waits for a run without fetching its result."""

from baton import flow, task


@task
def cool_task():
    return "sup"


@flow
def my_workflow():
    future = cool_task.submit()
    future.wait()


if __name__ == "__main__":
    my_workflow()
