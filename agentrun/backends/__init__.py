"""Agent backends by name. A backend module defines `run(session: RunSession) -> None` and may
define `findings(session) -> list[dict]` (context, claim, action, confidence, evidence), which the
run loop writes as knowledge when the run ends."""

BACKENDS: dict[str, str] = {
    "builtin": "agentrun.backends.builtin",
    "claude": "agentrun.backends.claude",
}
