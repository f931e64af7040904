"""`python3 -m auditpy.audispd`."""

import sys

from auditpy.audispd.main import main

sys.exit(main())
