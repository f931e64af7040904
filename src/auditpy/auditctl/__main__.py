"""`python3 -m auditpy.auditctl`."""

import sys

from auditpy.auditctl.cli import main

sys.exit(main())
