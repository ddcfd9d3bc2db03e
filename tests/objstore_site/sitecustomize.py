# Registers the objstore:// test filesystem in every Python process that has this folder on
# PYTHONPATH (a test's `sing` subprocess, its Ray workers): tests/objstore.py.
try:
    from tests.objstore import register

    register()
except ImportError:  # the repository root is not on the path: nothing to register
    pass
