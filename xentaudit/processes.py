"""What the command line's processes (and those ``parallel`` starts) do to TensorFlow, and the
API's callers never get: its Python logs quiet, its C++ start-up lines hidden while it loads, its
CPU tensors pooled. For the API's callers the library never touches the process's environment,
logging or file descriptors.

Imports nothing heavy: the command line imports it for every command, --help included, and
calls it before it parses a command's options.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

_quiet = False  # a command line's process (``as_command_line``): TensorFlow loads quietly
_stderr = 2  # stderr's file descriptor (``stderr_fd``)


def as_command_line() -> None:
    """Set up this process as the command line's (or one of the processes ``parallel`` starts,
    the API's too), before TensorFlow loads; never the API's caller's process.

    - Unless TF_CPP_MIN_LOG_LEVEL is "0" (the command line's -v): TensorFlow's Python logger
      (retracing notices and the like) at ERROR, a level TensorFlow does not reset; and
      TensorFlow loaded quietly from now on (``import_backend``).
    - Unless the user set it: TensorFlow's CPU tensors from its BFC pool
      (TF_CPU_ALLOCATOR_USE_BFC, read when TensorFlow makes its allocator, at its first op),
      which reuses the memory of freed tensors, rather than from malloc, whose heap the
      chunk-sized tensors of a check fragment (a default `check --backend tf` of 4096 x 32000
      float32 on a 2-core AVX2 CPU peaked at 1384 MiB with malloc, 871 MiB with the pool, and
      `check_file` ran 1.15x faster). It places tensors, it computes nothing (a check's JSON
      report is the same either way: tested).
    """
    global _quiet
    _quiet = True
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") != "0":
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def import_backend(module: str, tensorflow: bool) -> ModuleType:
    """Import a backend's zoo ``module`` (``tensorflow``: TensorFlow's, which imports it).

    For the API's callers a plain import. In a command line's process (``as_command_line``) at
    TF_CPP_MIN_LOG_LEVEL 3, TensorFlow's C++ start-up lines, which ignore that level and
    bypass Python, go to /dev/null, wherever TensorFlow is first needed.
    """
    global _stderr
    loud = "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3"
    if not tensorflow or not _quiet or loud:
        return importlib.import_module(module)
    sys.stderr.flush()
    _stderr = os.dup(2)  # set first: a signal's line goes there from now on (``stderr_fd``)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        return importlib.import_module(module)
    finally:
        os.dup2(_stderr, 2)
        saved, _stderr = _stderr, 2
        os.close(devnull)
        os.close(saved)


def stderr_fd() -> int:
    """The file descriptor of the process's stderr: 2, or a copy of it while TensorFlow loads
    quietly (``import_backend``), where a line that must be seen (a signal's) is written."""
    return _stderr
