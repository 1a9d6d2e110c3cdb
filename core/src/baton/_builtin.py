"""The built-in runners, registered through the same entry point and hook as any plugin's."""

from __future__ import annotations

from baton.hookspecs import RegisterRunner, hookimpl

__all__ = ["register_runners"]


@hookimpl
def register_runners(register: RegisterRunner) -> None:
    # Lazy references: a runner's module is imported only when the runner is selected.
    register("thread", "baton._runners.thread:ThreadRunner")
    register("sync", "baton._runners.sync:SyncRunner")
    register("process", "baton._runners.process:ProcessRunner")
