"""python -m pulid_tools {queue,batch,identity,doctor} ... (run from the pack's folder)."""
from __future__ import annotations

import argparse
import sys

from .client import command as client
from .comfy_http import graph


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pulid_tools", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    client.add_arguments(commands.add_parser(
        "queue", help="run an API graph on a ComfyUI server (headless)", description=client.__doc__,
        epilog=graph.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    from .batch import command as batch

    batch.add_arguments(commands.add_parser(
        "batch", help="many images over one or more ComfyUI servers (resumable)", description=batch.__doc__,
        epilog=graph.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    from .doctor import command as doctor  # light: the heavy imports happen inside its checks

    doctor.add_arguments(commands.add_parser(
        "doctor", help="check the model files and encoders of a ComfyUI install", description=doctor.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    from .identity import command as identity_cli

    identity_cli.add_arguments(commands.add_parser(
        "identity", help="encode a person's identity file from photos (no ComfyUI running)",
        description=identity_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.command == "queue":
        return client.run(args)
    if args.command == "identity":
        return identity_cli.run(args)
    if args.command == "batch":
        return batch.run(args)
    return doctor.run(args)


if __name__ == "__main__":
    sys.exit(main())
