"""Helpers shared by several test modules. A test module imports from here (or from the other
helper modules of tests/), never from another test module (tests/test_suite_layout.py keeps it so)."""
