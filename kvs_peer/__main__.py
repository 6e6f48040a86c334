"""``python -m kvs_peer`` is the ``kvs-peer`` command."""

import sys

from .cli import main

sys.exit(main())
