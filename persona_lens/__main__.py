import sys

from persona_lens.cli import main

sys.exit(main())
