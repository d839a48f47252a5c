"""``tlcm-trainer``: serve the trainer app on 127.0.0.1 (other addresses only when asked, then guarded).

The app starts processes and reads files with the user's rights, so it listens on loopback unless
``--host`` says otherwise; on any other address it requires a password (Gradio auth, from
``--password`` or ``$TLCM_TRAINER_PASSWORD``) or ``--no-auth``, which prints a loud warning and shows a
red banner on every page. Gradio's public share links are never used.

The app's own packages (Gradio and the rest of the ``app`` extra) are imported only once the options
are read, so ``--help`` works without them and a missing one is one line naming the install command.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .presets import Preset

LOOPBACK_NAMES = ("localhost",)
INSTALL_HINT = 'pip install "tlcm-suite[app]"'
NO_AUTH_WARNING = ("WARNING: the TLCM trainer is reachable on {host} WITHOUT A PASSWORD. Anyone who can reach "
                   "this address can start processes and read files as your user. Use --password instead.")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlcm-trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1 = this "
                        "machine only; e.g. 0.0.0.0 exposes it and then needs --password or --no-auth)")
    parser.add_argument("--port", type=int, default=7870, help="port (default 7870)")
    parser.add_argument("--user", default="tlcm", help="login name when a password is set (default tlcm)")
    parser.add_argument("--password", default=os.environ.get("TLCM_TRAINER_PASSWORD"),
                        help="password for a non-loopback --host (default $TLCM_TRAINER_PASSWORD)")
    parser.add_argument("--no-auth", action="store_true", help="expose without a password (loud warning)")
    return parser


def main(argv: list[str] | None = None, presets: dict[str, Preset] | None = None) -> int:
    """Serve the app; ``presets`` (name → preset, the first is the default) replace the GPU presets."""
    args = build_parser().parse_args(argv)
    banner, auth = "", None
    if args.password:
        auth = (args.user, args.password)
    elif not is_loopback(args.host):
        if not args.no_auth:
            print(f"tlcm-trainer: --host {args.host} exposes the app beyond this machine: set --password (or "
                  "$TLCM_TRAINER_PASSWORD), or pass --no-auth to accept the risk", file=sys.stderr)
            return 2
        banner = NO_AUTH_WARNING.format(host=args.host)
        print("\n" + "!" * 100 + f"\n{banner}\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")     # a local tool: no usage pings
    try:
        from .app import CSS, build_app
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing in ("", "tlcm", "tlcm_train"):         # this project's own module: a real bug, not an install
            raise
        print(f"tlcm-trainer: the app needs {missing}, which is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 2
    # A service manager's stop (SIGTERM) closes the app the way Ctrl+C does, so its temporary files go with it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    build_app(banner=banner, presets=presets).launch(server_name=args.host, server_port=args.port, auth=auth,
                                    share=False, css=CSS, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
