"""The contracts every stage shares: config, data, preprocessing, decision rule, run record,
manifest, metrics. Imports no stage and nothing heavy (no torch, no BentoML at import), so
training, export, the service, load tests and reports all read one definition."""
