"""The built-in runners, registered through the same hook as any plugin's."""

from __future__ import annotations

from baton.hookspecs import RegisterRunner, hookimpl

__all__ = ["register_runners"]


@hookimpl
def register_runners(register: RegisterRunner) -> None:
    register("thread", "baton._runners.thread:ThreadRunner")
    register("sync", "baton._runners.sync:SyncRunner")
