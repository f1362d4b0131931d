"""Judging formats: one module per way of asking the judge (pairwise.py, single.py) behind one
interface (base.py), with the prompt pieces (prompts.py, flexjudge_prompts.json), verdict parsing
(verdicts.py) and preference rows (preferences.py) they share; registry.py names them by mode."""
