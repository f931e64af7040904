"""`python3 -m auditpy.audisp_remote`."""

import sys

from auditpy.audisp_remote.plugin import main

sys.exit(main())
