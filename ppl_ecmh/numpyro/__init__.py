"""The NumPyro adapter: p(x)^alpha as a NumPyro model (`target`) and MCMC kernels that sample it
(`kernels`), so that `numpyro.infer.MCMC` runs the library's samplers."""
