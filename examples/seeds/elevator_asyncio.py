"""Async tasks run concurrently with `asyncio.gather`."""

import asyncio

from baton import flow, task


@task
async def stop_at_floor(floor: int):
    print(f"elevator moving to floor {floor}")
    # `floor` hundredths of a second rather than `floor` seconds, so the ride takes a moment.
    await asyncio.sleep(floor / 100)
    print(f"elevator stops on floor {floor}")


@flow
async def elevator():
    floors = list(range(10, 0, -1))
    await asyncio.gather(*[stop_at_floor(floor) for floor in floors])


if __name__ == "__main__":
    asyncio.run(elevator())
