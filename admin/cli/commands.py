"""What each ``veer`` command does: the proxy commands and the admin API's operator commands.

The command line itself (options, help, exit codes) is ``admin.cli.parsing``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from admin.cli import client as api
from admin.cli import render
from admin.cli.client import AdminClient, ClientError, UsageError

if TYPE_CHECKING:
    from proxy.config.model import Config

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


def say(message: str) -> None:
    """A line on stderr that cannot fail the command: with stderr a closed pipe the
    message is lost, never the exit code (main takes a BrokenPipeError for stdout's)."""
    try:
        print(message, file=sys.stderr, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # further writes go nowhere, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())


# -- proxy commands ---------------------------------------------------------------
def _load(path: str) -> Config:
    from proxy.config.load import load  # here: ``veer status`` need not import the proxy
    from proxy.config.reader import ConfigError

    try:
        return load(path)
    except ConfigError as exc:
        say(f"veer: config error: {exc}")
        raise SystemExit(2) from None


def _startable(path: str) -> Config:
    """The config, and the files it names usable (what ``run`` needs at start): exit 2
    naming the key otherwise."""
    from proxy.runtime.preflight import preflight

    cfg = _load(path)
    problems = preflight(cfg)
    for problem in problems:
        say(f"veer: config error: {path}: {problem}")
    if problems:
        raise SystemExit(2)
    for variant, pool in (("original", cfg.original), ("new", cfg.new)):
        if pool.secure and not pool.tls.verify:
            say(f"veer: warning: {path}: upstreams.{variant}.tls.verify is false: the "
                "https endpoints are not verified")
    return cfg


def cmd_check(args: argparse.Namespace) -> int:
    """Refuse what ``run`` would refuse, with the same message; print the effective config
    as YAML in the config's own keys (stdout: ``check > b.yaml`` gives a config that
    means the same), and on stderr what each gate needs before it can pass."""
    import yaml

    from proxy.config.emit import to_config_data

    cfg = _startable(args.config)
    print(f"# veer check {args.config}: the effective config, every default filled in")
    # Non-ASCII escaped: a raw U+0085 would read back as a space (another salt).
    print(yaml.safe_dump(to_config_data(cfg), sort_keys=False), end="")
    if cfg.rollout is not None:
        say(render.render_gate_needs(cfg.rollout, args.rate))
    say(f"veer: {args.config}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the proxy until SIGTERM (drains) or SIGINT."""
    from admin.main import run

    return run(_startable(args.config))


def cmd_demo(args: argparse.Namespace) -> int:
    """Two demo backends, veer in front, traffic, and a live view of the split."""
    from admin.demo.run import run_demo

    return run_demo(seconds=args.seconds, weight=args.weight, rate=args.rate,
                    degrade_at=args.degrade_at, experiment=args.experiment)


# -- operator commands ------------------------------------------------------------
def make_client(args: argparse.Namespace) -> AdminClient:
    """The admin client the global options describe (flags, then environment, then defaults)."""
    url = getattr(args, "admin", None) or os.environ.get(api.URL_ENV) or api.DEFAULT_URL
    token_file = getattr(args, "token_file", None)
    if token_file:
        try:
            token: str | None = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"--token-file {token_file}: {exc.strerror}") from None
        if not token:
            raise UsageError(f"--token-file {token_file} is empty")
    else:
        token = os.environ.get(api.TOKEN_ENV, "").strip() or None
    actor = getattr(args, "actor", None)
    if actor is None:
        actor = os.environ.get("USER", "").strip()
        if not (actor and actor.isascii() and actor.isprintable()):
            actor = "cli"
    elif not actor.strip():
        raise UsageError("--actor must not be empty")
    return AdminClient(url, token, actor.strip()[:64], getattr(args, "timeout", 5.0))


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _emit(args: argparse.Namespace, answer: dict[str, Any],
          render: Callable[[dict[str, Any]], str]) -> int:
    print(json.dumps(answer, indent=2) if _wants_json(args) else render(answer))
    return api.OK


def cmd_status(args: argparse.Namespace) -> int:
    """Print the rollout, its gates, the weights and each variant's numbers."""
    return _emit(args, make_client(args).status(), render.render_status)


def cmd_weights(args: argparse.Namespace) -> int:
    """Show the weights, or set them (``weights set``)."""
    c = make_client(args)
    if args.weights_command != "set":
        return _emit(args, c.weights(), render.render_weights)
    if args.new is None and args.original is None:
        raise UsageError("weights set: give --new PERCENT and/or --original PERCENT")
    return _emit(args, c.set_weights(new=args.new, original=args.original), render.render_mutation)


def cmd_action(args: argparse.Namespace) -> int:
    """advance, approve, promote, pause, resume or abort."""
    return _emit(args, make_client(args).action(args.command, args.reason),
                 render.render_mutation)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Immediate, gradual or targeted rollback."""
    if not args.gradual and (args.stages is not None or args.interval is not None):
        raise UsageError("rollback: --stages and --interval need --gradual")
    c = make_client(args)
    if args.users is not None:
        answer = c.rollback(args.reason, "targeted", users=args.users)
    elif args.gradual:
        stages = None if args.stages is None else [s / 100 for s in args.stages]
        answer = c.rollback(args.reason, "gradual", stages=stages, interval=args.interval)
    else:
        answer = c.rollback(args.reason)
    return _emit(args, answer, render.render_mutation)


def cmd_reload(args: argparse.Namespace) -> int:
    """Re-read the running veer's config file."""
    return _emit(args, make_client(args).reload(), render.render_reload)


def cmd_events(args: argparse.Namespace) -> int:
    """Events newest first, optionally filtered."""
    return _emit(args, make_client(args).events(args.kind, args.filter_actor, args.limit),
                 render.render_events)


def cmd_experiment(args: argparse.Namespace) -> int:
    """``experiment list``, or ``experiment results [NAME]`` (NAME: the only one configured)."""
    c = make_client(args)
    if args.experiment_command == "list":
        return _emit(args, c.experiments(), render.render_experiments)
    name: str | None = args.name
    if name is None:
        listed = [str(e.get("name")) for e in c.experiments().get("experiments") or []]
        if not listed:
            raise api.Refused(404, "not found", "no experiment is configured in this veer "
                                                "(add an experiment: section to its config)")
        if len(listed) > 1:
            raise UsageError(f"experiment results: {len(listed)} experiments are configured "
                             f"({', '.join(listed)}); name one")
        name = listed[0]
    return _emit(args, c.experiment_results(name), render.render_experiment_results)


def cmd_watch(args: argparse.Namespace) -> int:
    """Reprint the status every ``--interval`` seconds until Ctrl-C (or ``--count`` times).

    A failed refresh is shown in place and retried; the exit code is that of the
    last refresh when ``--count`` ends the watch, 0 on Ctrl-C.
    """
    c = make_client(args)
    code, shown = api.OK, 0
    try:
        while True:
            try:
                answer: dict[str, Any] | None = c.status()
                code, problem = api.OK, ""
            except ClientError as exc:
                answer, code, problem = None, exc.exit_code, f"veer: {exc}"
            shown += 1
            if _wants_json(args):
                print(json.dumps(answer if answer is not None else
                                 {"error": problem, "exit_code": code}), flush=True)
            else:
                head = (f"veer watch  {c.url}  every {args.interval:g}s  {render.when(time.time())}"
                        "  (Ctrl-C to stop)")
                body = render.render_status(answer) if answer is not None else problem
                sys.stdout.write(f"{CLEAR}{head}\n\n{body}\n")
                sys.stdout.flush()
            if args.count is not None and shown >= args.count:
                return code
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print()
        return api.OK


def guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a ``ClientError`` into ``veer: <message>`` on stderr and its exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ClientError as exc:
            say(f"veer: {exc}")
            return exc.exit_code
        except KeyboardInterrupt:
            return 130

    run.__doc__ = func.__doc__
    return run
