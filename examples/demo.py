"""A first flow: fan out over a list, fan in, on the default `thread` runner."""

import time

from baton import flow, task, wait


@task(retries=2, retry_delay_seconds=0.1)
def fetch(page: int) -> list[int]:
    time.sleep(0.2)  # stands in for a slow network call
    return list(range(page * 10, page * 10 + 10))


@task
def total(chunks: list[list[int]]) -> int:
    return sum(sum(chunk) for chunk in chunks)


@flow
def demo(pages: int = 8) -> int:
    chunks = fetch.map(range(pages))  # 8 runs at once on the thread runner
    wait(chunks)
    return total(chunks)  # futures passed in are resolved to their results


if __name__ == "__main__":
    started = time.perf_counter()
    result = demo()
    elapsed = time.perf_counter() - started
    print(f"total = {result} in {elapsed:.2f} s (8 x 0.2 s of work, run concurrently)")
