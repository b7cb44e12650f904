"""Redis: every key (``keys``), jobs (``jobs``), the chunk stream (``stream``), live queue nodes
(``nodes``), the merge of chunk results (``merge``), the records they share (``records``) and the
embedded server (``redis_server``)."""
