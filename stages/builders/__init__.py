"""Builders shared by stage modules: config -> library values (run paths, data, generation backends, rankers,
training parts). They import neither a stage module nor the runner."""
