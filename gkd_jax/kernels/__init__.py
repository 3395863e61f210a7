"""Vocabulary-streaming divergence kernels (see issue 3 and DESIGN.md §3).

Helpers working in parallel in this tree: read /tmp/common.md (repo and commit rules) before editing.
Replace this docstring when you write the real module.
"""
