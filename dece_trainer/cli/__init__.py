"""The ``dece-trainer`` command line: the dispatcher (``main``) and the library's ``train`` script."""
