"""The terminal client of a SayIt node (``client``) and the ``sayit`` command (``cli``)."""
