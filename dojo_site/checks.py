"""System checks: problems `manage.py check` (and runserver, migrate…) should tell the user about."""

import shutil

from django.core.checks import Warning, register

BWRAP_INSTALL_HINT = (
    "Install bubblewrap: `apt-get install bubblewrap` (Debian/Ubuntu), `dnf install bubblewrap` "
    "(Fedora), `pacman -S bubblewrap` (Arch); `make test` installs it on Debian."
)


@register()
def bwrap_check(app_configs, **kwargs) -> list[Warning]:
    if shutil.which("bwrap"):
        return []
    return [
        Warning(
            "bubblewrap (bwrap) is not installed: experiments run with weaker isolation "
            "(resource limits, a separate user and process group, but no hidden files or cut network).",
            hint=BWRAP_INSTALL_HINT,
            id="dojo.W001",
        )
    ]
