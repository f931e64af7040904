"""`python3 -m auditpy.audisp_nats`."""

import sys

from auditpy.audisp_nats.plugin import main

sys.exit(main())
