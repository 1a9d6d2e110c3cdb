"""Async tasks gathered in an async flow yield to one another: 1 2 a 6 b 7 c 8 d 9."""

import asyncio

from baton import flow, task


@task
async def print_values(values):
    for value in values:
        await asyncio.sleep(0.05)  # yield (0.05 s rather than 1 s: same order, sooner)
        print(value, end=" ")


@flow
async def async_flow():
    await print_values([1, 2])  # runs immediately
    coros = [print_values("abcd"), print_values("6789")]

    # asynchronously gather the tasks
    await asyncio.gather(*coros)


if __name__ == "__main__":
    asyncio.run(async_flow())
