"""Static files that come from installed Python packages rather than from our `static/` folder.

Plotly's JavaScript ships inside the `plotly` wheel (plotly/package_data/plotly.min.js), so a pip
install brings it offline and its version is the one pinned in pyproject.toml. This finder serves
it as `vendor/plotly/plotly.min.js`: runserver finds it in DEBUG, `collectstatic` copies it into
STATIC_ROOT for DEBUG-off serving, and the 4.8 MB file is never copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage


def _plotly_dir() -> Path | None:
    try:
        import plotly
    except ImportError:
        return None
    return Path(plotly.__file__).resolve().parent / "package_data"


# static path → file name inside the package folder
PACKAGE_FILES = {"vendor/plotly/plotly.min.js": "plotly.min.js"}


class PackageFinder(BaseFinder):
    def check(self, **kwargs) -> list:
        folder = _plotly_dir()
        if folder is None or not (folder / "plotly.min.js").is_file():
            return [Error("plotly.min.js not found: install the pinned `plotly` package (pyproject.toml)",
                          id="dojo.E101")]
        return []

    def find(self, path: str, find_all: bool = False, **kwargs):
        folder = _plotly_dir()
        name = PACKAGE_FILES.get(path)
        if folder is None or name is None or not (folder / name).is_file():
            return [] if find_all else None
        found = str(folder / name)
        return [found] if find_all else found

    def list(self, ignore_patterns):
        folder = _plotly_dir()
        if folder is None:
            return
        storage = FileSystemStorage(location=str(folder))
        # collectstatic copies `path` from `storage` into STATIC_ROOT under storage.prefix/path.
        storage.prefix = "vendor/plotly"
        for name in PACKAGE_FILES.values():
            if (folder / name).is_file():
                yield name, storage
