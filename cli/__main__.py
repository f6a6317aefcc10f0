"""`python -m cli`: the `anomdet` command without its console script."""

import sys

from cli.app import main

sys.exit(main())
