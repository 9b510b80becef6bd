"""Execute notebooks in a fresh kernel of *this* Python environment (benchmarks, grading).

Whatever Jupyter kernels are installed, the kernel runs ``sys.executable -m ipykernel_launcher``,
so a notebook sees exactly the packages of the environment that runs it.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

__all__ = ["current_env_kernel_manager_class", "execute_notebook"]


def current_env_kernel_manager_class():
    """An AsyncKernelManager class whose every kernel spec runs ipykernel in this interpreter."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class CurrentEnvSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                argv=[sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python {platform.python_version()} ({sys.prefix})",
                language="python",
                resource_dir="",
            )

    class CurrentEnvKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("kernel_spec_manager", CurrentEnvSpecs())
            super().__init__(**kwargs)

    return CurrentEnvKernelManager


def execute_notebook(nb, cwd: str | Path, *, timeout: int = 900, allow_errors: bool = False, env: dict | None = None):
    """Run every cell of ``nb`` (an nbformat NotebookNode, modified in place) from a clean kernel.

    Raises nbclient's CellExecutionError on the first failing cell unless ``allow_errors``.
    """
    from nbclient import NotebookClient

    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=nb.metadata.get("kernelspec", {}).get("name") or "python3",
        kernel_manager_class=current_env_kernel_manager_class(),
        resources={"metadata": {"path": str(cwd)}},
        allow_errors=allow_errors,
    )
    client.execute(**({} if env is None else {"env": env}))
    return nb
