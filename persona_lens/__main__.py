import os
import sys

from persona_lens.cli import main

code = main()
if code == 130:  # Ctrl-C: everything is written and closed; skip the interpreter's slow teardown (seconds with torch
    sys.stdout.flush()  # loaded) and any request thread still waiting on a hung server
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
