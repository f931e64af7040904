"""`python3 -m auditpy.audisp_json`."""

import sys

from auditpy.audisp_json.plugin import main

sys.exit(main())
