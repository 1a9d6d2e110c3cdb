"""`.map` passes a non-iterable argument to every run as it is."""

from baton import flow, task


@task
def add_together(x, y):
    return x + y


@flow
def sum_it(numbers: list[int], static_value: int):
    futures = add_together.map(numbers, static_value)
    return futures.result()


resulting_sum = sum_it([1, 2, 3], 5)
assert resulting_sum == [6, 7, 8]
