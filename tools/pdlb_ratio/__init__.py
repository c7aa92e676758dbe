"""pdlb-ratio: the seed's prefill:decode ratio experiment, automated (see docs/ratio-experiment.md)."""
