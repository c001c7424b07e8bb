"""Fused backends of the ops. Each module registers itself with ``aghmn_fast.ops`` on import.

``aghmn_fast.backends`` is both this package and the public function
``aghmn_fast.backends(device=None)`` (which backends are available, fastest first): the package
module is made callable, so that importing a backend module (which binds the package as the
attribute ``aghmn_fast.backends``) can never shadow the function.
"""
import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, device=None):
        """Names of the available backends, fastest first; see :func:`aghmn_fast.ops.backends`."""
        from ..ops import backends
        return backends(device)


sys.modules[__name__].__class__ = _CallablePackage
