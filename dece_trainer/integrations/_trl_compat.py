"""The one seam between dece-trainer and the private parts of TRL, as `dece_trainer.trainer._compat` is for
transformers: every private TRL name is read here, and each accessor raises a ``RuntimeError`` naming the internal
and the supported versions when a TRL release moves it (``tests/test_compat.py`` checks them).

Supported: TRL >= ``MIN_TRL`` (< 2), the ``trl`` extra of ``pyproject.toml``.

The kernel swap: TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``) looks its chunked log-probability
kernel up as the module global ``_ChunkedLogProbFunction`` on every call. That global is replaced once, for the whole
process, by a `KernelProxy` whose ``apply`` calls the kernel `use_logprob_kernel` set in the current context (a
`contextvars.ContextVar`: its own per thread and per asyncio task, restored on exit, so nested blocks unwind), and
TRL's own kernel where none is set. So a DeCE trainer and a stock ``SFTTrainer`` can compute losses at the same time
in two threads, each with its own kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Any, Iterator

import trl

MIN_TRL = "1.16"
LOGPROB_KERNEL = "_ChunkedLogProbFunction"  # in trl.trainer.utils

_kernel: contextvars.ContextVar[Any] = contextvars.ContextVar("dece_trainer_trl_logprob_kernel", default=None)
_install_lock = threading.Lock()


def _moved(internal: str) -> RuntimeError:
    return RuntimeError(f"TRL {trl.__version__} has no `{internal}`, which dece-trainer relies on; it supports "
                        f"TRL >= {MIN_TRL}, < 2. Please report this with your versions.")


class KernelProxy:
    """Stands in for TRL's chunked log-probability kernel: ``apply`` runs the kernel of the current context
    (`use_logprob_kernel`), or TRL's (``original``) outside any."""

    def __init__(self, original: Any):
        self.original = original

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        kernel = _kernel.get()
        return (self.original if kernel is None else kernel).apply(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # anything else TRL may read is its own kernel's
        return getattr(self.original, name)


def install_kernel_proxy() -> KernelProxy:
    """Put the `KernelProxy` where TRL looks its kernel up, once per process (later calls return it)."""
    import trl.trainer.utils as trl_utils

    with _install_lock:
        current = getattr(trl_utils, LOGPROB_KERNEL, None)
        if current is None:
            raise _moved(f"trl.trainer.utils.{LOGPROB_KERNEL}")
        if not isinstance(current, KernelProxy):
            current = KernelProxy(current)
            setattr(trl_utils, LOGPROB_KERNEL, current)
        return current


@contextlib.contextmanager
def use_logprob_kernel(kernel: Any) -> Iterator[None]:
    """Within the block, in this thread (or task) only, TRL's fused LM head calls ``kernel.apply`` where it calls its
    chunked log-probability kernel's ``apply``."""
    install_kernel_proxy()
    token = _kernel.set(kernel)
    try:
        yield
    finally:
        _kernel.reset(token)
