"""The MLPs' training step and batch loop in C++ (`native_steps.cpp`, ATen operations called without Python
in between) and the CNNs' max-pool (`native_pool.cpp`: an AVX-512 twin and a portable one, which
`MTL_NATIVE_ISA=portable` forces), built once per machine with torch's extension builder and loaded from
its cache afterwards (about a minute to build on 2 cores, 0.05 s to load). `scripts/setup.sh` builds it,
so neither the app nor the tests wait for a compiler.

Optional by design: where it cannot be built (no C++ compiler) or `MTL_NATIVE=0` is set, the Python step in
`fastpath.py` and torch's pooling run the same maths, and the run's record says which trained it.

    python -m mtl_core.native    # build (or find) it and say where it is
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

SOURCES = tuple(Path(__file__).with_name(name) for name in ("native_steps.cpp", "native_pool.cpp"))
HEADERS: tuple[Path, ...] = ()

_module: ModuleType | None = None
_reason = ""  # why there is no module ("" when there is one or no load was tried)
_tried = False


def build_dir() -> Path:
    """Where the build lives: `MTL_NATIVE_DIR`, else the user's cache, one folder per Python and torch
    version (an extension is built against both)."""
    env = os.environ.get("MTL_NATIVE_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(cache) / "mtl-playground" / f"native-{python}-torch-{torch.__version__}"


def _writable_folder() -> Path:
    """The build folder for this source: under `build_dir()`, or the temp folder where that cannot be
    made (a read-only home): a build there lasts until the machine clears it."""
    try:
        folder = build_dir() / module_name()
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        if os.environ.get("MTL_NATIVE_DIR"):
            raise  # a folder the user chose: say it failed rather than build elsewhere
        folder = Path(tempfile.gettempdir()) / f"mtl-playground-native-{os.getuid()}" / module_name()
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def module_name() -> str:
    """The extension's name carries its sources' hash: an edited source builds anew, never a stale .so."""
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in (*SOURCES, *HEADERS)))
    return "mtl_native_" + digest.hexdigest()[:12]


def switched_off(variable: str) -> bool:
    """Whether the environment variable `variable` says off (0, false, no, off); unset means on."""
    return os.environ.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def disabled() -> bool:
    return switched_off("MTL_NATIVE")


def get() -> ModuleType | None:
    """The built module, building it first if this machine has not yet; None (see `reason()`) where it
    cannot be built or is switched off. Tried once per process."""
    global _module, _reason, _tried
    if disabled():
        _reason = "switched off (MTL_NATIVE=0)"
        return None
    if _tried:
        return _module
    _tried = True
    try:
        # The builder warns on import that no CUDA runtime is found: true, and irrelevant to a CPU extension.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        folder = _writable_folder()
        _module = cpp_extension.load(
            name=module_name(),
            sources=[str(source) for source in SOURCES],
            build_directory=str(folder),
            # OpenMP for the pooling's at::parallel_for (it then runs on torch's own OpenMP threads, the
            # library libtorch loads); without it (other compilers) the pooling runs on one thread.
            extra_cflags=["-O2", "-fopenmp"] if sys.platform.startswith("linux") else ["-O2"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no headers, a read-only cache: the Python step runs instead
        _module, _reason = None, f"the C++ step could not be built ({type(exc).__name__}: {str(exc)[:200]})"
    return _module


def reason() -> str:
    """Why `get()` gave None ("" if it gave a module or was not called)."""
    return _reason


def main() -> int:
    module = get()
    if module is None:
        print(f"mtl_core.native: {reason()}; training uses the Python step (same maths, slower)")
        return 0 if disabled() else 1
    print(f"mtl_core.native: {module_name()} ready in {build_dir()}")
    return 0
