"""Start the Claude Code CLI inside its sandbox with a scrubbed environment (stdlib only).

The SDK spawns `cli_path` with the server's whole environment (SECRET_KEY, database URLs, …)
merged with the options' `env`. This helper is what `cli_path` runs, through a small wrapper
script written by agentrun/claude_sandbox.py:

    python claude_exec.py SPEC.json <the SDK's CLI arguments…>

SPEC.json holds the sandbox command line (bwrap … -- the real CLI) and the environment: the
variables set outright and the names (or `PREFIX*` patterns) passed through from the SDK's
environment. Secrets stay out of argv (other local users can read a process's argv) and out
of SPEC.json: the API key reaches the CLI through the environment only.
"""

import json
import os
import sys


def _kept(name: str, patterns: list[str]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        spec = json.load(fh)
    env = {k: v for k, v in os.environ.items() if _kept(k, spec["keep"])}
    env.update(spec["set"])
    argv = [*spec["argv"], *sys.argv[2:]]
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
