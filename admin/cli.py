"""The ``veer`` command: ``run``, ``check`` and ``demo``.

Exit codes: 0 success, 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from proxy import config as config_mod


def _load(path: str) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        print(f"veer: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config and print the effective one (defaults filled in)."""
    cfg = _load(args.config)
    print(json.dumps(cfg.to_dict(), indent=2, default=str))
    print(f"veer: {args.config}: OK", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the proxy until SIGTERM (drains) or SIGINT."""
    from admin.main import run

    return run(_load(args.config))


def cmd_demo(args: argparse.Namespace) -> int:
    """Two demo backends, veer in front, traffic, and a live view of the split."""
    from admin.demo import run_demo

    return run_demo(seconds=args.seconds, weight=args.weight, rate=args.rate,
                    degrade_at=args.degrade_at)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="veer", description="progressive-delivery reverse proxy")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config and print the effective config")
    check.add_argument("--config", "-c", required=True, help="YAML config file")
    check.set_defaults(func=cmd_check)
    demo = sub.add_parser("demo", help="see veer split traffic, with no other software")
    demo.add_argument("--seconds", type=float, default=45.0, help="how long to run (0 = forever)")
    demo.add_argument("--weight", type=float, default=None,
                      help="a fixed percent on new instead of the rollout plan")
    demo.add_argument("--rate", type=float, default=400.0, help="requests per second to send")
    demo.add_argument("--degrade-at", type=float, default=32.0,
                      help="second at which the new backend degrades (0 = never)")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``veer`` script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
