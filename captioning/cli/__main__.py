"""`python -m captioning.cli` is the `captioner` command."""

import sys

from captioning.cli.main import main

sys.exit(main())
