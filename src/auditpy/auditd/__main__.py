"""`python3 -m auditpy.auditd`."""

import sys

from auditpy.auditd.cli import main

sys.exit(main())
