"""What `futures.result()` is shorthand for: each future's result, in order."""

from baton import task


# Any task and iterable will do; these make the snippet runnable.
@task
def some_task(x):
    return x * 10


some_iterable = [1, 2, 3]

futures = some_task.map(some_iterable)
results = [future.result() for future in futures]
print(results)
