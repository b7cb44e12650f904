"""Redis: every key (``keys``), jobs and their chunk stream (``jobs``), the merge of chunk
results (``merge``) and the embedded server (``redis_server``)."""
