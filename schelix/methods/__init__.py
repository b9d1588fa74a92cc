"""Integration methods run beside scHelix, all behind one interface (see :mod:`.base`)."""

from schelix.methods.base import (
    MethodResult,
    MethodSpec,
    available_methods,
    get_method,
    register,
    run_method,
)

__all__ = [
    "MethodResult",
    "MethodSpec",
    "available_methods",
    "get_method",
    "register",
    "run_method",
]
