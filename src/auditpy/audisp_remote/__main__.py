"""`python3 -m auditpy.audisp_remote`."""

import sys

from auditpy.audisp_remote.main import main

sys.exit(main())
