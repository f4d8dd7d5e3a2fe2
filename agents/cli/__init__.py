"""The ``runstream`` command and the offline tools behind its subcommands (none runs inside a
worker): ``main`` (the parser and the worker/replay/dlq commands), ``runs`` (the HTTP client's
``runstream runs``), ``answers`` (``runs report``'s wait for the owner's answer), ``replay``
(rebuilding state from the log), ``storage`` and ``index`` (reading what is stored)."""
