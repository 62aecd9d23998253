#!/usr/bin/env python
"""nbdev's docs processing (what `nbdev-proc-nbs` does: every notebook through nbdev's processors into `_proc/`),
without its attempt to download and install Quarto when Quarto is missing (it needs root and the network).
Exits non-zero if any notebook fails to process. usage: python tools/proc_docs.py"""
import shutil, sys

import nbdev.quarto as quarto

if __name__ == "__main__":  # nbdev processes the notebooks in worker processes, which import this file again
    if shutil.which("quarto") is None:
        quarto._ensure_quarto = lambda: print("tools/proc_docs.py: Quarto is not installed, so only the notebook processing runs; "
                                              "install Quarto from quarto.org, then `nbdev-docs` builds the site", file=sys.stderr)
    quarto._pre_docs()
