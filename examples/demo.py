"""A first flow: fan out over a list, fan in, on the default `thread` runner."""

import time

from baton import flow, task, wait

PAGES = 8
SECONDS_PER_PAGE = 0.2


@task(retries=2, retry_delay_seconds=0.1)
def fetch(page: int) -> list[int]:
    time.sleep(SECONDS_PER_PAGE)  # stands in for a slow network call
    return list(range(page * 10, page * 10 + 10))


@task
def total(chunks: list[list[int]]) -> int:
    return sum(sum(chunk) for chunk in chunks)


@flow
def demo(pages: int = PAGES) -> int:
    # One run per page, as many at a time as the thread runner has worker threads.
    chunks = fetch.map(range(pages))
    wait(chunks)
    return total(chunks)  # futures passed in are resolved to their results


if __name__ == "__main__":
    started = time.perf_counter()
    result = demo()
    elapsed = time.perf_counter() - started
    one_by_one = PAGES * SECONDS_PER_PAGE
    print(
        f"total = {result} in {elapsed:.2f} s ({PAGES} fetches of {SECONDS_PER_PAGE} s "
        f"each, {one_by_one:.2f} s if run one after another)"
    )
