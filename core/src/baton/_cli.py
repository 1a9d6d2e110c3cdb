"""The ``baton`` command: list runners and plugins, run a flow from a file, check a runner
against the conformance kit.

Only this module imports click, so that ``import baton`` stays fast.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

import baton
from baton import _plugins
from baton._errors import BatonError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import ModuleType

    from baton._flow import Flow

__all__ = ["main"]


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()
        for line in lines
    )


def _quiet_discovery() -> None:
    """Discover plugins; load failures are part of this command's output, so the
    warnings that would repeat them are silenced. Strict mode still fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _plugins.BatonPluginWarning)
        try:
            _plugins.list_plugins()
        except BatonError as exc:
            _fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(baton.__version__, "--version", "-V", prog_name="baton")
def main() -> None:
    """Baton: run a workflow's steps concurrently on a task runner chosen by name."""
    from pydantic import ValidationError

    from baton._settings import get_settings

    try:
        get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"BATON_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"invalid setting: {problems}.", 2)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def runners(as_json: bool) -> None:
    """List the installed task runners and where each comes from.

    Lists each runner's capabilities, which imports its class.
    """
    _quiet_discovery()
    rows: list[dict[str, Any]] = []
    for info in _plugins.list_runners():
        entry: dict[str, Any] = {
            "name": info.name,
            "plugin": info.plugin,
            "distribution": info.distribution,
            "version": info.version,
            "url_schemes": list(info.url_schemes),
            "capabilities": [],
            "error": None,
        }
        try:
            entry["capabilities"] = sorted(str(c) for c in info.load().capabilities)
        except BatonError as exc:
            entry["error"] = str(exc)
        rows.append(entry)
    for key, claims in _plugins.list_conflicts().items():
        for info in claims:
            rows.append(
                {
                    "name": key,
                    "plugin": info.plugin,
                    "distribution": info.distribution,
                    "version": info.version,
                    "url_schemes": list(info.url_schemes),
                    "capabilities": [],
                    "error": f"{key!r} is claimed by more than one plugin; selecting it fails",
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [
        [
            r["name"],
            r["plugin"],
            r["distribution"],
            r["version"],
            ", ".join(r["capabilities"]) or "-",
            ", ".join(f"{s}://" for s in r["url_schemes"]) or "-",
        ]
        for r in rows
    ]
    header = ["NAME", "PLUGIN", "DISTRIBUTION", "VERSION", "CAPABILITIES", "URLS"]
    click.echo(_table(header, table))
    problems = [r for r in rows if r["error"]]
    for r in problems:
        click.echo(f"\n{r['name']} ({r['distribution']}): {r['error']}", err=True)
    failed = [p for p in _plugins.list_plugins() if p.error]
    if failed:
        names = ", ".join(f"{p.name} ({p.distribution})" for p in failed)
        click.echo(f"\nPlugins that failed to load: {names}. See `baton plugins`.", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with tracebacks.")
def plugins(as_json: bool) -> None:
    """List the discovered plugins, their runners, and why any failed to load.

    With BATON_STRICT_PLUGINS set, a plugin problem still makes the exit code 1, after
    the listing that shows it.
    """
    strict_error: str | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _plugins.BatonPluginWarning)
        try:
            _plugins.list_plugins()
        except BatonError as exc:
            strict_error = str(exc)
        # Strict discovery stops at the first problem; list everything, then fail.
        found = _plugins.registry(strict=False)
    infos = list(found.plugins)
    conflicts: list[dict[str, Any]] = [
        {
            "name": key,
            "claimed_by": [
                {"plugin": i.plugin, "distribution": i.distribution, "version": i.version}
                for i in claims
            ],
        }
        for key, claims in sorted(found.conflicts.items())
    ]
    ignored = [
        {"name": key, "plugin": i.plugin, "distribution": i.distribution, "version": i.version}
        for key, _, i in found.shadowed
    ]
    if as_json:
        document = {
            "plugins": [p.to_dict() for p in infos],
            "conflicts": conflicts,
            "ignored": ignored,
        }
        click.echo(json.dumps(document, indent=2))
        if strict_error is not None:
            _fail(strict_error)
        return
    rows = [
        [p.name, p.distribution, p.version, p.status, ", ".join(p.runners) or "-"] for p in infos
    ]
    click.echo(_table(["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "RUNNERS"], rows))
    for p in infos:
        if p.error:
            click.echo(f"\n{p.name} ({p.distribution} {p.version}) failed to load: {p.error}")
            click.echo((p.traceback or "").rstrip())
    for conflict in conflicts:
        who = " and ".join(f"{c['plugin']} ({c['distribution']})" for c in conflict["claimed_by"])
        click.echo(f"\nConflict: {conflict['name']!r} is registered by {who}.")
    for claim in ignored:
        click.echo(
            f"\nIgnored: {claim['plugin']} ({claim['distribution']}) registers "
            f"{claim['name']!r}, the name of a built-in runner; the built-in keeps it."
        )
    if any(p.skipped for p in infos):
        click.echo("\nSkipped plugins are not listed in BATON_LOAD_PLUGINS.")
    if strict_error is not None:
        _fail(strict_error)


def _split_target(target: str) -> tuple[Path, str | None]:
    path, sep, name = target.rpartition(":")
    # "C:\\flows.py" or a bare "flows.py" have no flow name after the last colon.
    if not sep or not name or "/" in name or "\\" in name or name.endswith(".py"):
        return Path(target), None
    return Path(path), name


def _parse_params(params: Sequence[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in params:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(
                f"{item!r} is not KEY=VALUE (for example --param n=3 or --param name=ada)",
                param_hint="'--param'",
            )
        if key in parsed:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="'--param'")
        try:
            parsed[key] = json.loads(text)
        except ValueError:
            parsed[key] = text
    return parsed


def _load_module(path: Path, show_traceback: bool) -> ModuleType:
    if not path.exists():
        raise click.BadParameter(f"no file {str(path)!r}", param_hint="'TARGET'")
    if not path.is_file():
        raise click.BadParameter(f"{str(path)!r} is not a file", param_hint="'TARGET'")
    path = path.resolve()
    # The file's directory goes first on sys.path, as with `python file.py`, so that
    # it can import its neighbours; it is imported under its own name (when free) so
    # that its tasks pickle by reference for runners in other processes.
    sys.path.insert(0, str(path.parent))
    name = path.stem
    if not name.isidentifier() or name in sys.modules:
        name = f"__baton_run_{abs(hash(str(path)))}__"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise click.BadParameter(
            f"{str(path)!r} cannot be imported as Python", param_hint="'TARGET'"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        if show_traceback:
            traceback.print_exc()
        _fail(f"could not load {str(path)!r}: {_where(exc, path)}{type(exc).__name__}: {exc}")
    return module


def _where(exc: BaseException, path: Path) -> str:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"line {exc.lineno}: "
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f"line {frames[-1].lineno}: " if frames else ""


def _find_flow(module: ModuleType, path: Path, name: str | None) -> Flow[..., Any]:
    from baton._flow import Flow

    flows = {attr: value for attr, value in vars(module).items() if isinstance(value, Flow)}
    listed = ", ".join(sorted(flows)) or "none"
    if not flows:
        _fail(f"{str(path)!r} defines no flow (a function decorated with @flow).", 2)
    if name is None:
        if len(flows) == 1:
            return next(iter(flows.values()))
        _fail(
            f"{str(path)!r} defines several flows ({listed}); choose one with "
            f"{path.name}:FLOW_NAME.",
            2,
        )
    found = flows.get(name) or next((f for f in flows.values() if f.name == name), None)
    if found is None:
        _fail(f"no flow named {name!r} in {str(path)!r}. Flows in it: {listed}.", 2)
    return found


def _check_params(flow: Flow[..., Any], params: dict[str, Any]) -> None:
    parameters = inspect.signature(flow.fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    named = [n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    listed = ", ".join(named) or "none"
    unknown = [k for k in params if k not in named]
    if unknown and not takes_any:
        _fail(
            f"flow {flow.name!r} has no parameter {', '.join(map(repr, unknown))}. "
            f"Its parameters: {listed}.",
            2,
        )
    missing = [
        n
        for n, p in parameters.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and n not in params
    ]
    if missing:
        hint = " ".join(f"--param {n}=VALUE" for n in missing)
        _fail(f"flow {flow.name!r} needs {', '.join(map(repr, missing))}: pass {hint}.", 2)


def _show_result(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, str):
        click.echo(value)
        return
    try:
        click.echo(json.dumps(value))
    except (TypeError, ValueError):
        click.echo(repr(value))


@main.command()
@click.argument("target", metavar="TARGET")
@click.option(
    "--runner",
    "-r",
    metavar="NAME",
    help="Task runner name or URL (default: the flow's own, or BATON_TASK_RUNNER).",
)
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A flow parameter; VALUE is read as JSON when it parses (3, true, [1,2]), "
    "else as a string. Repeat for more.",
)
@click.option("--traceback", "show_traceback", is_flag=True, help="Show full tracebacks.")
@click.option(
    "--trace",
    "trace_file",
    metavar="PATH",
    help="Write the flow run as a Chrome trace (JSON, opens in Perfetto) to PATH; "
    "the same as BATON_TRACE_FILE=PATH.",
)
@click.option(
    "--report",
    "report_file",
    metavar="PATH",
    help="Write the flow run as a self-contained HTML report to PATH; "
    "the same as BATON_REPORT_FILE=PATH.",
)
def run(
    target: str,
    runner: str | None,
    params: tuple[str, ...],
    show_traceback: bool,
    trace_file: str | None,
    report_file: str | None,
) -> None:
    """Run a flow from a Python file: TARGET is path/to/file.py:flow_name.

    The flow name is the name of the decorated function (or the flow's name); it
    can be left out when the file defines one flow. The flow's return value is
    printed (as JSON when it converts). The exit code is 1 when the flow run fails.
    """
    path, name = _split_target(target)
    values = _parse_params(params)
    _quiet_discovery()
    for info in _plugins.list_plugins():
        if info.error:
            click.echo(
                f"Warning: plugin {info.name!r} ({info.distribution} {info.version}) failed to "
                f"load and was skipped: {info.error}. Other runners keep working; "
                "`baton plugins` shows why.",
                err=True,
            )
    if runner is not None:
        try:
            _plugins.lookup_runner(runner)
        except BatonError as exc:
            raise click.BadParameter(str(exc), param_hint="'--runner'") from None
    module = _load_module(path, show_traceback)
    flow = _find_flow(module, path, name)
    _check_params(flow, values)
    if runner is not None:
        flow = flow.with_options(task_runner=runner)
    try:
        with _files_set(trace_file, report_file):
            if flow.is_async:
                import asyncio

                state = asyncio.run(flow(**values, return_state=True))
            else:
                state = flow(**values, return_state=True)
    except KeyboardInterrupt:
        _fail(f"flow {flow.name!r} was interrupted.", 130)
    except BatonError as exc:  # raised before the flow's function ran (runner, plugins)
        _fail(str(exc), 2)
    if state.is_completed():
        _show_result(state.result())
        return
    error = state.error
    if show_traceback and error is not None:
        traceback.print_exception(type(error), error, error.__traceback__)
    detail = f"{type(error).__name__}: {error}" if error is not None else state.message
    _fail(f"flow {flow.name!r} ended in state {state.name}: {detail}")


@contextlib.contextmanager
def _files_set(trace_file: str | None, report_file: str | None) -> Iterator[None]:
    """BATON_TRACE_FILE / BATON_REPORT_FILE as --trace / --report give them, while the
    flow runs (settings are read as a flow run starts)."""
    saved = {name: os.environ.get(name) for name in ("BATON_TRACE_FILE", "BATON_REPORT_FILE")}
    for name, value in (("BATON_TRACE_FILE", trace_file), ("BATON_REPORT_FILE", report_file)):
        if value is not None:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name", metavar="NAME")
@click.option(
    "--level",
    type=int,
    default=None,
    help="Conformance level to check at (default: the kit's latest).",
)
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED, metavar="[PYTEST_ARGS]...")
def conformance(name: str, level: int | None, pytest_args: tuple[str, ...]) -> None:
    """Run the conformance kit (baton.testing) against the installed runner NAME.

    NAME is a runner name or URL, as `baton runners` lists them. PYTEST_ARGS go to
    pytest, for example -x, -v or -k retries. Ends with a summary to paste into the
    runner's README. The exit code is pytest's: 0 when the runner passes.
    """
    missing = [m for m in ("pytest", "hypothesis") if importlib.util.find_spec(m) is None]
    if missing:
        needed = " and ".join(missing)
        _fail(f'the conformance kit needs {needed}: pip install "baton-core[testing]"', 2)
    from baton.testing import LATEST_LEVEL, check_runner

    if level is not None and not 1 <= level <= LATEST_LEVEL:
        raise click.BadParameter(
            f"the kit has levels 1 to {LATEST_LEVEL}, got {level}", param_hint="'--level'"
        )
    _quiet_discovery()
    try:
        _plugins.lookup_runner(name)
    except BatonError as exc:
        raise click.BadParameter(str(exc), param_hint="'NAME'") from None
    report = check_runner(name, level=level or LATEST_LEVEL, pytest_args=pytest_args, echo=True)
    click.echo("")
    click.echo(report.summary())
    sys.exit(report.exit_code)
