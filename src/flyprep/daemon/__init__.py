"""The service: :mod:`~flyprep.daemon.service` (the composition root: watcher, sessions,
bus, ``.apx`` streams), :mod:`~flyprep.daemon.session` (one scan's thread) and
:mod:`~flyprep.daemon.bus` (the only module that speaks ZeroMQ). Nothing is imported here,
so that ``flyprep status`` loads the bus alone."""
