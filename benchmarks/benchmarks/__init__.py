"""fastattn's asv benchmarks: see ../asv.conf.json for how to run them."""
