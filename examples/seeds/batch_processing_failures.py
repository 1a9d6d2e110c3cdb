"""Run everything to the end, then sort the runs by state: failures handled, not fatal."""

from typing import Any

from baton import State, flow, task, wait


@task
def process_data(item: int) -> str:
    if item < 0:
        raise ValueError(f"Cannot process negative value: {item}")
    return f"Processed {item}"


@flow
def batch_processing():
    items = [1, -2, 3, -4, 5]

    # Submit all tasks and return the futures
    futures = process_data.map(items)

    # Wait for all futures to complete concurrently
    done, not_done = wait(futures)  # noqa: RUF059 (named to show what wait() returns)

    # Check each future's state
    successful: list[Any] = []
    failed: list[State] = []

    for future in done:
        if future.state.is_completed():
            successful.append(future.result())
        else:
            failed.append(future.state)

    print(f"Processed {len(successful)} items successfully")
    print(f"Failed to process {len(failed)} items")

    return successful


if __name__ == "__main__":
    batch_processing()
