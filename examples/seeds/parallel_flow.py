"""Two task runs submitted at once print over each other: AAAA and BBBB alternate."""

import time

from baton import flow, task


@task
def print_values(values):
    for value in values:
        time.sleep(0.05)  # a short pause per value, so the two runs visibly take turns
        print(value, end="\r")


@flow
def parallel_flow():
    print_values.submit(["AAAA"] * 15)
    print_values.submit(["BBBB"] * 10)


if __name__ == "__main__":
    parallel_flow()
