"""The sampling algorithms as pure functions over NamedTuple states: the MH ratio (`mh`), the cut
distributions (`cuts`), Power-SMC (`smc`) and scalable power sampling (`tmc`). The engine runs the
per-chain samplers with them; the NumPyro kernels (`ppl_ecmh.numpyro`) wrap them."""
