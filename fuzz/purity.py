"""Which build of the data plane the harness drives: the mypyc-compiled modules (`make build`
puts `proxy/*.so` beside their sources) or the pure Python sources.

Python imports a `.so` before the `.py` of the same name, so once the tree is built the
sources are never run. `use_pure_sources()` (what POINTSMAN_PURE=1 does for `python -m
fuzz.run`, `fuzz.target` and `fuzz.replay`) puts a finder in front that loads every `proxy.*`
module from its `.py`. It must run before anything imports a hot module: compiled and pure
modules of the mypyc group do not mix.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PROXY_DIR = Path(__file__).resolve().parent.parent / "proxy"


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Loads `proxy.<name>` from proxy/<name>.py even where proxy/<name>.*.so exists."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package != "proxy" or not name or "." in name:
            return None
        source = PROXY_DIR / f"{name}.py"
        if not source.exists():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def pure_requested() -> bool:
    """POINTSMAN_PURE=1, as for `pip install` (setup.py): run the sources, not the build."""
    return os.environ.get("POINTSMAN_PURE") == "1"


def compiled_present() -> bool:
    """Whether `make build` has left compiled modules in proxy/."""
    return any(PROXY_DIR.glob("*.so"))


def use_pure_sources() -> None:
    """Load every `proxy.*` module imported from now on from its Python source."""
    if any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
        return
    compiled = sorted(
        name
        for name, module in sys.modules.items()
        if name.startswith("proxy.") and str(getattr(module, "__file__", "")).endswith(".so")
    )
    if compiled:
        raise RuntimeError(f"compiled modules already imported: {', '.join(compiled)}")
    sys.meta_path.insert(0, _SourcesFirst())


def build_kind() -> str:
    """'compiled' or 'pure': what `proxy.http1` was loaded from."""
    import proxy.http1

    return "compiled" if str(proxy.http1.__file__).endswith(".so") else "pure"
