"""The ``veer`` command: run the proxy, and operate a running one through its admin API.

Proxy commands: ``run``, ``check`` (exit 2 on a bad config) and ``demo``.

Operator commands, each a client of the admin API (``admin.cli.client``)::

    veer status                       rollout, phase, gates, weights, per-variant numbers
    veer weights                      the current weights
    veer weights set --new 12.5       set them by hand (also --original 90 --new 10)
    veer advance|approve|promote|pause|resume|abort|retry [--reason TEXT]
    veer rollback [--reason TEXT] [--gradual [--stages 75,50,25,0] [--interval 10s]
                                   | --users u1,u2]
    veer reload                       re-read the config file (a bad one changes nothing)
    veer events [--kind K] [--actor A] [--limit N]
    veer watch [--interval 1] [--count N]
    veer experiment list              the A/B experiments: split, users, decision
    veer experiment results [NAME]    decision, sample-ratio check, per-metric numbers
                                      (NAME may be left out when one is configured)

Every operator command takes ``--admin URL`` (default ``$VEER_ADMIN`` or
http://127.0.0.1:9901), ``--token-file PATH`` (default: the token in
``$VEER_ADMIN_TOKEN``), ``--actor NAME`` (recorded in events; default ``$USER``
or ``cli``), ``--json`` (the API's JSON instead of tables) and ``--timeout
SECONDS`` (default 5). Reading needs no token; changing does.

Exit codes a script can rely on:

0  success
1  the API refused the request (409 conflict, 422 invalid, 404, ...);
   stderr says ``veer: <error>: <detail>``
2  usage error (bad options, bad --admin URL, unreadable --token-file)
3  the admin API cannot be reached (connection refused, timeout, DNS); stderr names the URL
4  unauthorized (401: missing or wrong token); stderr says to set VEER_ADMIN_TOKEN
5  the admin API failed (5xx, or an answer that is not JSON)

A reader that closes early (``veer status | head``) is not an error: the output stops
and the command exits as it would have.
"""

from __future__ import annotations

import argparse
import os
import sys

from admin.cli import client as api
from admin.cli.commands import (
    cmd_action,
    cmd_check,
    cmd_demo,
    cmd_events,
    cmd_experiment,
    cmd_reload,
    cmd_rollback,
    cmd_run,
    cmd_status,
    cmd_watch,
    cmd_weights,
    guarded,
)

EXIT_CODES = """\
exit codes:
  0  success
  1  the API refused the request (409 conflict, 422 invalid, 404, ...)
  2  usage error
  3  cannot reach the admin API (connection refused, timeout, DNS)
  4  unauthorized: missing or wrong token (set VEER_ADMIN_TOKEN)
  5  the admin API failed (5xx)"""
ACTIONS = {
    "advance": "move to the next phase now, skipping duration and gates",
    "approve": "approve leaving the current phase (when it requires approval)",
    "promote": "straight to 100% on new, rollout complete",
    "pause": "stop advancing (breaches still roll back)",
    "resume": "continue after a pause or an alert",
    "abort": "give the rollout up: everyone back to original",
    "retry": "after a rollback or abort: start the plan again at its first phase",
}

# -- argument types -----------------------------------------------------------------
def _percent(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percent, e.g. 12.5") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not in 0..100")
    return value


def _positive_seconds(text: str) -> float:
    from proxy.config.units import parse_duration  # the config's duration syntax: 250ms, 10s, 2m

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _stages(text: str) -> list[float]:
    try:
        stages = [float(s.strip().removesuffix("%")) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated percents, e.g. "
                                         "75,50,25,0") from None
    if not all(0 <= s <= 100 for s in stages) or stages[-1] != 0:
        raise argparse.ArgumentTypeError(f"{text!r}: percents of the weight, 0..100, "
                                         "ending in 0")
    return stages


def _users(text: str) -> list[str]:
    users = [u.strip() for u in text.split(",") if u.strip()]
    if not users:
        raise argparse.ArgumentTypeError("give at least one user id, e.g. u1,u2")
    return users


def _positive_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of requests/s") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 requests/s")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 500:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1..500")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


# -- the parser -----------------------------------------------------------------------
def _admin_options(actor: bool = True) -> argparse.ArgumentParser:
    """The options every operator command takes (absent unless given, so nesting is safe).

    ``events`` leaves out ``--actor``: there it filters, and reading records no actor.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("admin API options")
    g.add_argument("--admin", metavar="URL", default=argparse.SUPPRESS,
                   help=f"admin API base URL (default: ${api.URL_ENV} or {api.DEFAULT_URL})")
    g.add_argument("--token-file", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"read the bearer token from PATH (default: ${api.TOKEN_ENV})")
    if actor:
        g.add_argument("--actor", metavar="NAME", default=argparse.SUPPRESS,
                       help="who you are, recorded in events (default: $USER or cli)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the API's JSON instead of tables")
    g.add_argument("--timeout", metavar="SECONDS", type=_positive_seconds,
                   default=argparse.SUPPRESS, help="per request (default: 5)")
    return p


class _Version(argparse.Action):
    """``--version``: worked out only when asked (it looks at the installed modules)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from proxy import describe_build

        try:
            number = version("veer")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown"
        print(f"veer {number}, hot path {describe_build()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole ``veer`` command line."""
    p = argparse.ArgumentParser(prog="veer", description="progressive-delivery reverse proxy",
                                epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version, nargs=0,
                   help="veer's version, and whether its hot path is compiled (mypyc) or pure")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="refuse what run would refuse; print the effective "
                                         "config as YAML and what each gate needs")
    check.add_argument("--config", "-c", required=True, help="YAML config file")
    check.add_argument("--rate", type=_positive_rate, metavar="R",
                       help="requests/s on new: also print the earliest each phase can "
                            "advance at that rate")
    check.set_defaults(func=cmd_check)
    demo = sub.add_parser("demo", help="see veer split traffic, with no other software")
    demo.add_argument("--seconds", type=float, default=45.0, help="how long to run (0 = forever)")
    demo.add_argument("--weight", type=float, default=None,
                      help="a fixed percent on new instead of the rollout plan")
    demo.add_argument("--rate", type=float, default=400.0, help="requests per second to send")
    demo.add_argument("--degrade-at", type=float, default=32.0,
                      help="second at which the new backend degrades (0 = never)")
    demo.add_argument("--experiment", action="store_true",
                      help="run an A/B experiment (50/50, accuracy from the backends' "
                           "veer-metric header, conversions through the events API) instead "
                           "of a rollout")
    demo.set_defaults(func=cmd_demo)

    common = _admin_options()

    def admin_command(name: str, help_: str,
                      parent: argparse.ArgumentParser = common) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_.replace("%", "%%"), description=help_,
                              parents=[parent],
                              epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    status = admin_command("status", "the rollout, its gates, the weights and the numbers")
    status.set_defaults(func=guarded(cmd_status))

    weights = admin_command("weights", "show the weights; 'weights set' changes them")
    wsub = weights.add_subparsers(dest="weights_command", metavar="[set]")
    wset = wsub.add_parser("set", parents=[common], epilog=EXIT_CODES,
                           help="set the weights by hand (pauses a running plan)",
                           description="Set the weights by hand; a running plan is paused so "
                                       "the controller does not undo it.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    wset.add_argument("--new", type=_percent, metavar="PERCENT", help="percent on new")
    wset.add_argument("--original", type=_percent, metavar="PERCENT",
                      help="percent on original (with --new, the two must add up to 100)")
    weights.set_defaults(func=guarded(cmd_weights), new=None, original=None)

    for action, help_ in ACTIONS.items():
        a = admin_command(action, help_)
        a.add_argument("--reason", metavar="TEXT",
                       help="why (recorded for pause, abort and retry)")
        a.set_defaults(func=guarded(cmd_action))

    rb = admin_command("rollback", "roll back: immediately (default), gradually, or for "
                                   "some users only")
    rb.add_argument("--reason", metavar="TEXT", help="why, recorded in the event")
    mode = rb.add_mutually_exclusive_group()
    mode.add_argument("--gradual", action="store_true",
                      help="step the weight down over time instead of to 0 at once")
    mode.add_argument("--users", type=_users, metavar="U1,U2",
                      help="targeted: send only these users back to original")
    rb.add_argument("--stages", type=_stages, metavar="P1,P2,...",
                    help="with --gradual: percents of the current weight to step through, "
                         "ending in 0 (default: the rollout's, e.g. 75,50,25,0)")
    rb.add_argument("--interval", type=_positive_seconds, metavar="DURATION",
                    help="with --gradual: time between steps, e.g. 10s")
    rb.set_defaults(func=guarded(cmd_rollback))

    rl = admin_command("reload", "re-read the config file: what changed, or why it was "
                                 "refused (the running config is kept)")
    rl.set_defaults(func=guarded(cmd_reload))

    ev = admin_command("events", "rollout events, newest first", _admin_options(actor=False))
    ev.add_argument("--kind", metavar="K", help="only this kind (advance, rollback, pause, ...)")
    ev.add_argument("--actor", dest="filter_actor", metavar="A",
                    help="only events by this actor (controller, or an operator)")
    ev.add_argument("--limit", type=_limit, default=50, metavar="N", help="at most N (1..500)")
    ev.set_defaults(func=guarded(cmd_events))

    w = admin_command("watch", "reprint the status until Ctrl-C")
    w.add_argument("--interval", type=_positive_seconds, default=1.0, metavar="SECONDS",
                   help="between refreshes (default: 1)")
    w.add_argument("--count", type=_count, metavar="N", help="stop after N refreshes")
    w.set_defaults(func=guarded(cmd_watch))

    exp = admin_command("experiment", "A/B experiments: 'experiment list', "
                                      "'experiment results [NAME]'")
    esub = exp.add_subparsers(dest="experiment_command", required=True,
                              metavar="{list,results}")

    def exp_command(name: str, help_: str) -> argparse.ArgumentParser:
        return esub.add_parser(name, help=help_, description=help_, parents=[common],
                               epilog=EXIT_CODES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)

    exp_command("list", "the configured experiments: split, users per variant, decision")
    er = exp_command("results", "an experiment's decision, sample-ratio check, users per "
                                "variant and per-metric numbers")
    er.add_argument("name", nargs="?", metavar="NAME",
                    help="the experiment (default: the one configured)")
    exp.set_defaults(func=guarded(cmd_experiment), name=None)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``veer`` script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (``veer status | head``): say nothing more, and keep the exit
        # codes for what veer itself did. stdout goes to /dev/null so the interpreter's
        # own flush at exit cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = api.OK  # stdout is written only once a call has succeeded
    return code
