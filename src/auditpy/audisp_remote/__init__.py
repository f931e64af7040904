"""pyaudisp-remote, the remote-logging plugin, in modules named after the way a record goes:

``main`` (the command: signals held first, options, configuration) starts ``plugin`` (the I/O
shell: one event loop), which reads stdin through ``input`` (decoder, record filter) into
the queue (`auditpy.system.spool`) and hands every event to ``delivery`` (the sans-I/O core,
which decides what is sent when, what a reply means and when to retry, consulting
``actions`` for the ``*_action`` settings); the shell carries out its decisions over ``link``
(the TCP or TLS connection).  ``signals`` and ``log`` are the small shared pieces.

The split is what lets the delivery rules be unit-tested without sockets or sleeps.
"""
