"""A task given a Future waits for it and receives its result."""

from baton import flow, task


@task
def cool_task():
    return "sup"


@task
def what_did_cool_task_say(what_it_said: str):
    return f"cool task said {what_it_said}"


@flow
def my_workflow():
    future = cool_task.submit()
    print(what_did_cool_task_say(future))


if __name__ == "__main__":
    my_workflow()
