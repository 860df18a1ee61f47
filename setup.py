"""Build hook for the optional native exit path (vmcfg/vmm/native/fastexit.c).

Everything else is in pyproject.toml.  The extension is optional: without a C compiler
the build goes on, and vmcfg runs the same exit path in Python (slower, same results).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("vmcfg.vmm.native._fastexit", ["vmcfg/vmm/native/fastexit.c"],
                             extra_compile_args=["-O2"], optional=True)])
