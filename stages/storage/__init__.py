"""Output storage: filesystems and atomic files (files.py), batch commits and resume (commit.py)."""
