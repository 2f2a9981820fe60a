"""`python -m smallcls` is the `smallcls` command."""

import sys

from smallcls.cli import main

sys.exit(main())
