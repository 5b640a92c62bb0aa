"""`python -m control.cli`: the `pointsman` command without the installed script."""

import sys

from control.cli import main

sys.exit(main())
