# Loaded by every Python process started from the test suite (PYTHONPATH); see netguard.py.
import os

if os.environ.get("UNMARK_NETGUARD_LOG"):
    import netguard

    netguard.install()
