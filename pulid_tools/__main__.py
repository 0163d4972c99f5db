"""python -m pulid_tools {queue,batch,identity,doctor} ... (run from the pack's folder). Every command ends
quietly (exit 141, as a command stopped by SIGPIPE) when the reader of its output goes away (`| head`)."""
from __future__ import annotations

import argparse
import os
import select
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
    commands = {"queue": client.run, "identity": identity_cli.run, "batch": batch.run, "doctor": doctor.run}
    try:
        code = commands[args.command](args)
        sys.stdout.flush()  # into a pipe the last lines are written here, and a closed pipe shows here
        return code
    except BrokenPipeError:
        if not output_closed():
            raise
        return quiet_exit()


def output_closed() -> bool:
    """Whether stdout or stderr is a pipe (or socket) whose reader has gone: `... | head -5` read its lines and
    left. Where poll() is missing (Windows) a BrokenPipeError that reached main is taken as that."""
    if not hasattr(select, "poll"):
        return True
    for stream in (sys.stdout, sys.stderr):
        try:
            poller = select.poll()
            poller.register(stream.fileno(), select.POLLOUT)
            if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
                return True
        except (OSError, ValueError):  # no file descriptor (a test's captured stream)
            continue
    return False


def quiet_exit() -> int:
    """End quietly when our output was closed, as Unix tools do: no traceback, and no 'Exception ignored ...
    BrokenPipeError' when Python flushes the streams at exit (they are pointed at the null device first)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    os.close(devnull)
    return SIGPIPE_EXIT


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: the status a shell gives a command that stopped because its reader left


if __name__ == "__main__":
    sys.exit(main())
