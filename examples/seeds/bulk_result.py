"""`.result()` on the FutureList that `.map` returns gives every run's result."""

from baton import task


# Any task and iterable will do; these make the snippet runnable.
@task
def some_task(x):
    return x * 10


some_iterable = [1, 2, 3]

futures = some_task.map(some_iterable)
results = futures.result()
print(results)
