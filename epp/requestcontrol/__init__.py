"""Per-request policy before scheduling: model rewrites, objectives (priority), admission,
and the pool's InferenceObjectives and InferenceModelRewrites kept applied to them
(``pool_policies``, over the informers of ``epp.k8s``)."""
