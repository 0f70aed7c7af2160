"""``python -m producer`` is the ``hdrlog`` command."""

import sys

from producer.cli import main

sys.exit(main())
