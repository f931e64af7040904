"""`python3 -m auditpy.audispd`."""

import sys

from auditpy.audispd.dispatcher import main

sys.exit(main())
