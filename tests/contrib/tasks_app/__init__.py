"""Task functions and worker settings for tests/contrib/test_tasks.py."""
