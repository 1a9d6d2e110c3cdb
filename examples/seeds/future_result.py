"""`.submit` returns a Future; `.result()` waits for the run and returns its value."""

from baton import flow, task


@task
def cool_task():
    return "sup"


@flow
def my_workflow():
    future = cool_task.submit()
    result = future.result()
    print(result)


if __name__ == "__main__":
    my_workflow()
