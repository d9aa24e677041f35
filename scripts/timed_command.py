"""Run a command and write what a reader needs to check it: the command as written (with a placeholder
such as STAGE1 for a path of this machine), what the placeholder stood for, its output and its wall time.

Usage: python scripts/timed_command.py 'COMMAND WITH STAGE1' STAGE1=/path/of/this/machine [NAME=VALUE ...]
(used by results/real/recipe.yaml for evaluate.txt)
"""
import os
import shlex
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    shown, names = argv[0], dict(a.split("=", 1) for a in argv[1:])
    command = shown
    for name, value in names.items():
        command = command.replace(name, value)
    command = os.path.expandvars(command)
    print(f"$ {shown}")
    started = time.perf_counter()
    args = shlex.split(command)
    if args and args[0] == "python":  # the interpreter running this script (the checkout's venv)
        args[0] = sys.executable
    done = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - started
    sys.stdout.write(done.stdout)
    print(f"wall time {wall:.2f} s")
    if done.returncode:
        sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
