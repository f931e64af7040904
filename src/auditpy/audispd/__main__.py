"""`python3 -m auditpy.audispd`."""

import sys

from auditpy.system.aio import asyncio_without_ssl

asyncio_without_ssl()  # before the dispatcher's modules import asyncio (system.aio)

from auditpy.audispd.main import main  # noqa: E402

sys.exit(main())
